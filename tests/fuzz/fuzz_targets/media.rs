//! Media requests: `decode_media` (the MQTT v5 Content Type, its parameters, the user
//! properties and the raw payload), then, for audio, the framing into model rows
//! (`model::audio::frames`) under the pack's silero_vad settings and two small ones.
//!
//! Input layout: the Content Type on the first line, then up to 8 `key=value` user properties one
//! per line, an empty line, and the payload.
#![no_main]

use edgeinfer::model::audio::{frames, pcm16_to_f32};
use edgeinfer::model::manifest::AudioDecl;
use edgeinfer::protocol::media::{decode_media, Media};
use edgeinfer::protocol::DataType;
use edgeinfer::tensors::elements;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let (head, payload) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let content_type = lines.next();
    let properties: Vec<(String, String)> = lines
        .take(8)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let Some(Ok(request)) = decode_media(content_type, payload, &properties) else {
        return;
    };
    match request.media.expect("a media request carries its media") {
        Media::Image(bytes) => assert_eq!(bytes, payload),
        Media::Audio { samples, datatype, .. } => {
            let floats = match datatype {
                DataType::Int16 => pcm16_to_f32(elements::<i16>(&samples).expect("INT16 samples")),
                DataType::Fp32 => elements::<f32>(&samples).expect("FP32 samples").to_vec(),
                other => panic!("audio samples of datatype {other}"),
            };
            for (frame, context) in [(512, 64), (4, 2), (1, 0)] {
                let decl = AudioDecl { input: "input".into(), sample_rate: 16000, frame, context };
                let mut carried = Vec::new();
                // Twice: the second chunk starts from the context the first one left.
                for one_frame in [false, false, true] {
                    if let Ok(rows) = frames(&decl, &floats, &mut carried, one_frame) {
                        assert_eq!(rows.shape(), &[floats.len() / frame, frame + context]);
                        assert_eq!(carried.len(), context);
                    }
                }
            }
        }
    }
});
