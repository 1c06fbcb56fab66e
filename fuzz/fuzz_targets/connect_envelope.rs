//! The Connect envelope decoder (`sandboxd_protocol::connect::EnvelopeDecoder`) fed in pieces:
//! the first byte picks the piece size. Whatever the pieces, the decoder must yield the same
//! envelopes as one push of everything, never more payload than was pushed, and respect its
//! size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandboxd_protocol::connect::{Envelope, EnvelopeDecoder, FrameError};

const MAX: usize = 1 << 16;

fn decode_all(pieces: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Envelope>, Option<FrameError>) {
    let mut d = EnvelopeDecoder::new(MAX);
    let mut out = Vec::new();
    for piece in pieces {
        d.push(piece);
        loop {
            match d.next_envelope() {
                Ok(Some(e)) => {
                    assert!(e.payload.len() <= MAX);
                    out.push(e);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let (whole, whole_err) = decode_all(&mut std::iter::once(body));
    let (pieces, pieces_err) = decode_all(&mut body.chunks(step));
    assert_eq!(whole, pieces);
    assert_eq!(whole_err, pieces_err);
    let payload: usize = whole.iter().map(|e| e.payload.len() + 5).sum();
    assert!(payload <= body.len());
});
