//! The `/files` multipart parsing as the agent drives it (`sandboxd-envd/src/files.rs`):
//! `multer::parse_boundary` on the Content-Type, then `multer::Multipart` over the body (in
//! pieces), reading each part's name, file name and every chunk. Input: a mode byte (odd: a
//! fixed valid Content-Type; even: the Content-Type is the next line), a byte picking the
//! piece size, then the body. Errors are fine (they become 400); panics and more part bytes
//! than body bytes are not.
#![no_main]

use bytes::Bytes;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    // Even mode: the fuzzer's own Content-Type line; odd: a fixed valid one, so that most runs
    // reach the body parser.
    let (content_type, rest) = if mode % 2 == 0 {
        let Some(nl) = data.iter().position(|&b| b == b'\n') else {
            return;
        };
        let Ok(ct) = std::str::from_utf8(&data[..nl]) else {
            return;
        };
        (ct, &data[nl + 1..])
    } else {
        ("multipart/form-data; boundary=XyZ", data)
    };
    let Some((&step, body)) = rest.split_first() else {
        return;
    };
    let Ok(boundary) = multer::parse_boundary(content_type) else {
        return;
    };
    let pieces: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(usize::from(step).max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut multipart = multer::Multipart::new(futures::stream::iter(pieces), boundary);
    futures::executor::block_on(async {
        let mut total = 0usize;
        while let Ok(Some(mut field)) = multipart.next_field().await {
            let _ = (field.name().map(str::len), field.file_name().map(str::len));
            while let Some(Ok(chunk)) = field.next().await {
                total += chunk.len();
            }
        }
        assert!(total <= body.len());
    });
});
