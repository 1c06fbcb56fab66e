//! Control-plane create bodies (`POST /sandboxes` and `/v2/sandboxes`) through the daemon's own
//! decoding and checks (`sandboxd_server::api::sandboxes::parse_create_body`): any input is a
//! set of parameters or a 400, never a panic; accepted maps stay within their bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandboxd_server::ApiError;
use sandboxd_server::api::sandboxes::parse_create_body;

fuzz_target!(|data: &[u8]| {
    for v2 in [false, true] {
        match parse_create_body(data, v2) {
            Ok(p) => {
                assert!(p.metadata.len() <= 256 && p.env_vars.len() <= 256);
                assert!(
                    p.env_vars
                        .keys()
                        .all(|k| !k.is_empty() && !k.contains('=') && !k.contains('\0'))
                );
                assert!(!v2 || p.secure);
            }
            Err(ApiError::BadRequest(_)) => {}
            Err(e) => panic!("a create body answered {e:?}"),
        }
    }
});
