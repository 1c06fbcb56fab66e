//! envd's JSON request decoding (`sandboxd_envd::connect::decode_json`) for every Connect
//! request message the agent accepts; the first byte picks the message. A decoded message must
//! encode again and decode to an equal message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandboxd_envd::connect::decode_json;
use sandboxd_protocol::{filesystem as fs, process as pr};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn check<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(msg) = decode_json::<T>(data) {
        let json = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let again: T = decode_json(&json).expect("an encoded message decodes");
        assert_eq!(again, msg, "{}", String::from_utf8_lossy(&json));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 14 {
        0 => check::<pr::StartRequest>(body),
        1 => check::<pr::UpdateRequest>(body),
        2 => check::<pr::SendInputRequest>(body),
        3 => check::<pr::StreamInputRequest>(body),
        4 => check::<pr::SendSignalRequest>(body),
        5 => check::<pr::SelectorRequest>(body),
        6 => check::<pr::Empty>(body),
        7 => check::<fs::PathRequest>(body),
        8 => check::<fs::MoveRequest>(body),
        9 => check::<fs::ListDirRequest>(body),
        10 => check::<fs::WatchDirRequest>(body),
        11 => check::<fs::WatcherIdRequest>(body),
        12 => check::<pr::ProcessConfig>(body),
        _ => check::<fs::Empty>(body),
    }
});
