//! Arbitrary bytes on an authenticated peer connection, read as the transport reads them:
//! length-prefixed frames (`read_frame`, with the frame size limit), each turned into the
//! envelopes the router gets (`received_envelopes`). Reading stops at the first error, as the
//! connection would close. Nothing panics; a frame that decodes encodes back to itself; every
//! envelope is from the connection's peer to this node, whatever the bytes claim.
#![no_main]

use cohort_core::env::Payload;
use cohort_core::ids::{NodeId, PeerId};
use cohort_net::frame::{decode_payload, encode, read_frame, received_envelopes};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

const PEER: NodeId = NodeId(2);
const ME: NodeId = NodeId(1);
const FRAME_SIZE_BYTES_MAX: usize = 1024 * 1024;

fuzz_target!(|bytes: &[u8]| {
    let mut reader = bytes;
    let mut buffer = Vec::new();
    loop {
        // Reading from a slice never waits: one poll finishes it.
        let read = pin!(read_frame(&mut reader, FRAME_SIZE_BYTES_MAX, &mut buffer));
        let Poll::Ready(result) = read.poll(&mut Context::from_waker(Waker::noop())) else {
            unreachable!("a slice reader never waits")
        };
        let Ok(frame) = result else { return };
        let again = encode(&frame);
        assert_eq!(decode_payload(&again[4..]).expect("a frame's own encoding decodes"), frame);
        let Ok(envelopes) = received_envelopes(frame, PEER, ME) else { return };
        for envelope in envelopes {
            assert_eq!((envelope.from, envelope.to), (PEER, ME));
            if let Payload::Raft(message) = envelope.payload {
                assert_eq!((PeerId(message.from).node(), PeerId(message.to).node()), (PEER, ME));
            }
        }
    }
});
