//! Requests whose whole payload is an image file or audio samples, named by the MQTT v5 Content
//! Type: what a camera or microphone gives, with no JSON around it. Request parameters travel
//! as User Properties (`id`, `session`, `timeout_ms`, `outputs`).
//!
//! | Content Type | payload |
//! |---|---|
//! | `image/png`, `image/jpeg` | the file |
//! | `audio/pcm;format=s16le;rate=16000` | mono samples, PCM16 little-endian (`format=f32le`: 32-bit floats) |
//! | `audio/wav` (`audio/x-wav`, `audio/wave`) | a mono WAV file, 16-bit integer or 32-bit float samples |
//! | `application/json`, `application/octet-stream`, none | an Open Inference Protocol request |
//!
//! Any other Content Type is refused, naming the ones accepted.

use std::time::Duration;

use tract_core::prelude::Tensor;

use super::binary::tensor_from_le_bytes;
use super::datatype::DataType;
use super::error::{DecodeError, DecodeFailure, MediaError};
use super::types::{InferRequest, RequestIdentity, RequestedOutput, Thresholds};

pub use super::types::Media;
/// `Some` when the Content Type names a media payload; `None` for everything else, which is then
/// read as an Open Inference Protocol request.
pub fn decode_media(
    content_type: Option<&str>,
    payload: &[u8],
    user_properties: &[(String, String)],
) -> Option<Result<InferRequest, DecodeFailure>> {
    let content_type = content_type?.trim();
    let mut parts = content_type.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
    let params: Vec<(String, &str)> = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"')))
        .collect();
    let property =
        |key: &str| user_properties.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
    let identity = RequestIdentity { id: property("id"), reply_to: None };
    let media = match essence.as_str() {
        "image/png" | "image/jpeg" | "image/jpg" => Ok(Media::Image(payload.to_vec())),
        "audio/pcm" => audio(content_type, &params, payload),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => wav(payload),
        "" | "application/json" | "application/octet-stream" | "text/json" | "text/plain" => return None,
        _ => Err(MediaError::Unsupported(content_type.chars().take(100).collect())),
    };
    let fail = |error: MediaError| DecodeFailure { identity: identity.clone(), error: DecodeError::Media(error) };
    let media = match media {
        Ok(media) => media,
        Err(e) => return Some(Err(fail(e))),
    };
    let numbers = (|| {
        Ok::<_, MediaError>((
            parsed::<u64>(property("timeout_ms"), MediaError::Timeout)?,
            parsed::<f32>(property("score"), MediaError::Score)?,
            parsed::<u64>(property("max_detections"), MediaError::MaxDetections)?,
            parsed::<f32>(property("nms_iou"), MediaError::Score)?,
        ))
    })();
    let (timeout_ms, score, max_detections, nms_iou) = match numbers {
        Ok(numbers) => numbers,
        Err(e) => return Some(Err(fail(e))),
    };
    let timeout = timeout_ms.map(Duration::from_millis);
    let outputs = property("outputs").map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|name| RequestedOutput { name: name.to_string(), binary: None })
            .collect()
    });
    Some(Ok(InferRequest {
        identity,
        inputs: Vec::new(),
        outputs,
        binary_outputs: false,
        timeout,
        session: property("session"),
        media: Some(media),
        thresholds: Thresholds { score, max_detections, nms_iou },
    }))
}

/// A user property's number, when there is one; `error` names the property in the refusal.
fn parsed<T: std::str::FromStr>(
    value: Option<String>,
    error: fn(String) -> MediaError,
) -> Result<Option<T>, MediaError> {
    value.map(|v| v.trim().parse::<T>().map_err(|_| error(v))).transpose()
}

fn audio(content_type: &str, params: &[(String, &str)], payload: &[u8]) -> Result<Media, MediaError> {
    let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    if param("channels").is_some_and(|c| c != "1") {
        return Err(MediaError::AudioChannels(content_type.to_string()));
    }
    let datatype = match param("format").unwrap_or("s16le").to_ascii_lowercase().as_str() {
        "s16le" => DataType::Int16,
        "f32le" => DataType::Fp32,
        _ => return Err(MediaError::AudioFormat(content_type.to_string())),
    };
    let rate = param("rate").map(|r| r.parse::<u32>().map_err(|_| MediaError::AudioRate(content_type.to_string())));
    let rate = rate.transpose()?;
    let size = datatype.element_size().expect("numeric");
    if !payload.len().is_multiple_of(size) {
        let message = format!("{} bytes is not a whole number of {size}-byte samples", payload.len());
        return Err(MediaError::Samples(message));
    }
    let samples = tensor_from_le_bytes(datatype, &[payload.len() / size], payload).map_err(MediaError::Samples)?;
    Ok(Media::Audio { samples, datatype, rate })
}

/// A WAV file's samples, with the rate from its header. Reads no more samples than the payload
/// holds, whatever length the header claims.
fn wav(payload: &[u8]) -> Result<Media, MediaError> {
    let wav_error = |e: hound::Error| MediaError::Wav(e.to_string());
    let mut reader = hound::WavReader::new(std::io::Cursor::new(payload)).map_err(wav_error)?;
    let spec = reader.spec();
    let (datatype, samples) = match (spec.channels, spec.bits_per_sample, spec.sample_format) {
        (1, 16, hound::SampleFormat::Int) => {
            let mut samples = Vec::with_capacity(payload.len() / 2);
            for sample in reader.samples::<i16>() {
                samples.push(sample.map_err(wav_error)?);
            }
            (DataType::Int16, Tensor::from_shape(&[samples.len()], &samples))
        }
        (1, 32, hound::SampleFormat::Float) => {
            let mut samples = Vec::with_capacity(payload.len() / 4);
            for sample in reader.samples::<f32>() {
                samples.push(sample.map_err(wav_error)?);
            }
            (DataType::Fp32, Tensor::from_shape(&[samples.len()], &samples))
        }
        (channels, bits, format) => {
            let format = if format == hound::SampleFormat::Int { "integer" } else { "float" };
            return Err(MediaError::WavFormat { channels, bits, format });
        }
    };
    let samples = samples.expect("a rank-1 shape of the samples' length");
    Ok(Media::Audio { samples, datatype, rate: Some(spec.sample_rate) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_image_payload_carries_its_parameters_in_user_properties() {
        let request = decode_media(
            Some("image/png"),
            b"\x89PNG...",
            &props(&[("id", "cam-1"), ("timeout_ms", "250"), ("outputs", "labels, scores")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(request.identity.id.as_deref(), Some("cam-1"));
        assert_eq!(request.timeout, Some(Duration::from_millis(250)));
        let names: Vec<_> = request.outputs.unwrap().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["labels", "scores"]);
        assert!(matches!(request.media, Some(Media::Image(bytes)) if bytes == b"\x89PNG..."));
    }

    #[test]
    fn audio_formats_and_rates_are_read_from_the_content_type() {
        let pcm: Vec<u8> = [1i16, -2, 3].iter().flat_map(|s| s.to_le_bytes()).collect();
        let request =
            decode_media(Some("audio/pcm; rate=16000"), &pcm, &props(&[("session", "mic")])).unwrap().unwrap();
        assert_eq!(request.session.as_deref(), Some("mic"));
        let Some(Media::Audio { samples, datatype, rate }) = request.media else { panic!("audio") };
        assert_eq!((datatype, rate), (DataType::Int16, Some(16000)));
        assert_eq!(crate::tensors::elements::<i16>(&samples).unwrap(), &[1, -2, 3]);

        let floats: Vec<u8> = [0.5f32].iter().flat_map(|s| s.to_le_bytes()).collect();
        let request = decode_media(Some("audio/pcm;format=f32le"), &floats, &[]).unwrap().unwrap();
        assert!(matches!(request.media, Some(Media::Audio { datatype: DataType::Fp32, rate: None, .. })));
    }

    #[test]
    fn mistakes_are_named() {
        let err = decode_media(Some("audio/pcm;format=u8"), b"ab", &[]).unwrap().unwrap_err();
        assert!(err.error.to_string().contains("s16le or f32le"), "{}", err.error);
        let err = decode_media(Some("audio/pcm"), b"abc", &[]).unwrap().unwrap_err();
        assert!(err.error.to_string().contains("3 bytes"), "{}", err.error);
        let err =
            decode_media(Some("image/png"), b"x", &props(&[("id", "7"), ("timeout_ms", "soon")])).unwrap().unwrap_err();
        assert_eq!(err.identity.id.as_deref(), Some("7"));
        assert!(err.error.to_string().contains("timeout_ms"), "{}", err.error);
    }

    #[test]
    fn protocol_content_types_are_protocol_requests_and_others_are_refused() {
        assert!(decode_media(Some("application/json"), b"{}", &[]).is_none());
        assert!(decode_media(Some("application/json; charset=utf-8"), b"{}", &[]).is_none());
        assert!(decode_media(None, b"{}", &[]).is_none());
        let err = decode_media(Some("image/gif"), b"GIF89a", &[]).unwrap().unwrap_err();
        assert!(err.error.to_string().contains("\"image/gif\" is not accepted"), "{}", err.error);
        let err = decode_media(Some("audio/pcm;rate=16000;channels=2"), b"abcd", &[]).unwrap().unwrap_err();
        assert!(err.error.to_string().contains("only mono"), "{}", err.error);
    }

    fn wav_file(
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<std::io::Cursor<&mut Vec<u8>>>),
    ) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut writer = hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec).unwrap();
        write(&mut writer);
        writer.finalize().unwrap();
        bytes
    }

    #[test]
    fn a_wav_file_is_audio_at_its_own_rate() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let file = wav_file(spec, |w| [5i16, -7].iter().for_each(|&s| w.write_sample(s).unwrap()));
        let request = decode_media(Some("audio/wav"), &file, &[]).unwrap().unwrap();
        let Some(Media::Audio { samples, datatype, rate }) = request.media else { panic!("audio") };
        assert_eq!((datatype, rate), (DataType::Int16, Some(16000)));
        assert_eq!(crate::tensors::elements::<i16>(&samples).unwrap(), &[5, -7]);

        let stereo = hound::WavSpec { channels: 2, ..spec };
        let file = wav_file(stereo, |w| [1i16, 2].iter().for_each(|&s| w.write_sample(s).unwrap()));
        let err = decode_media(Some("audio/x-wav"), &file, &[]).unwrap().unwrap_err();
        assert!(err.error.to_string().contains("2 channel(s)"), "{}", err.error);
        let err = decode_media(Some("audio/wav"), b"RIFF\xff\xff\xff\xffWAVE", &[]).unwrap().unwrap_err();
        assert!(err.error.to_string().contains("WAV file is not readable"), "{}", err.error);
    }
}
