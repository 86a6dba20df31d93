//! Checking a decoded request against the model's contract, before it is queued: the code most
//! exposed to network input. Every refusal is an [`InputError`] sent back to the client.

use tract_core::prelude::*;

use super::detect::{Thresholds, MAX_DETECTIONS};
use super::image::{Frame, ImageGeometry};
use super::session::MAX_SESSION_ID_BYTES;
use super::{audio, InputError, Model, Preprocess};
#[cfg(test)]
use crate::protocol::ErrorCode;
use crate::protocol::{DataType, InferRequest, InputTensor, Media};
use crate::tensors::elements;

/// A request checked against the model: inputs in the model's order, outputs selected. Inputs
/// that are pre-processed or session state hold a placeholder until an inference thread fills
/// them in (decoding is too slow for the MQTT side, and state must be read in request order).
#[derive(Debug)]
pub struct PreparedInputs {
    pub inputs: TVec<TValue>,
    /// What the inference thread turns into the `[preprocess]` input.
    pub pending: Option<Pending>,
    /// `parameters.session`, for models with `[session]`.
    pub session: Option<String>,
    /// Whose session it is: the request's reply topic (set by the caller, who knows it).
    pub session_owner: String,
    /// Indices into the model's outputs, each with whether it goes back as raw bytes.
    pub outputs: Vec<(usize, bool)>,
    /// The request's detection thresholds, checked (a detector's only).
    pub thresholds: Thresholds,
    /// Where the image went in the input, once pre-processed (for a detector's boxes).
    pub geometry: Option<ImageGeometry>,
    /// The decoded frame, kept by a pipeline to crop the regions from.
    pub frame: Option<Frame>,
}

/// Request data waiting for pre-processing.
#[derive(Debug)]
pub enum Pending {
    Image(Vec<u8>),
    Audio(Vec<f32>),
}

impl PreparedInputs {
    /// The request's batch size: the leading dimension of its first input (one per image).
    pub fn rows(&self) -> usize {
        if self.pending.is_some() {
            return 1;
        }
        self.inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1)
    }

    /// Bytes the request holds while queued, counted against `requests.max_queued_bytes`.
    pub fn queued_bytes(&self) -> usize {
        let pending = match &self.pending {
            Some(Pending::Image(bytes)) => bytes.len(),
            Some(Pending::Audio(samples)) => samples.len() * 4,
            None => 0,
        };
        pending + self.inputs.iter().map(|t| t.as_bytes().len()).sum::<usize>()
    }
}

impl Model {
    /// Checks a decoded request against the model's contract and puts its inputs in model order.
    /// Cheap: images and audio are only taken over here, and decoded on an inference thread.
    pub fn prepare(&self, request: &mut InferRequest) -> Result<PreparedInputs, InputError> {
        let model = || self.name().to_string();
        let mut pending = None;
        if let Some(media) = request.media.take() {
            pending = Some(self.take_media(media)?);
        }
        let expected: Vec<String> = self.metadata.inputs.iter().map(|i| i.name.clone()).collect();
        let preprocessed = self.preprocess.as_ref().map(Preprocess::input);
        // Where an inference thread fills the input in (`complete`).
        let placeholder = || Tensor::zero::<f32>(&[0]).expect("an empty tensor").into_tvalue();
        let mut inputs = TVec::with_capacity(self.inputs.len());
        let mut batch_sizes = Vec::new();
        for (index, spec) in self.inputs.iter().enumerate() {
            let filled_later = self.is_state_input(&spec.name) || (pending.is_some() && preprocessed == Some(index));
            if filled_later {
                inputs.push(placeholder());
                continue;
            }
            let Some(pos) = request.inputs.iter().position(|i| i.name == spec.name) else {
                return Err(InputError::Missing { model: model(), name: spec.name.clone(), expected });
            };
            let input = request.inputs.swap_remove(pos);
            if preprocessed == Some(index) {
                if let Some(taken) = self.take_encoded_input(&input)? {
                    pending = Some(taken);
                    inputs.push(placeholder());
                    continue;
                }
            }
            if input.datatype != spec.datatype {
                return Err(InputError::WrongDatatype {
                    name: spec.name.clone(),
                    expected: spec.datatype,
                    actual: input.datatype,
                });
            }
            let shape = input.tensor.shape();
            let fits = shape.len() == spec.shape.len()
                && shape.iter().zip(&spec.shape).all(
                    |(&got, &want)| {
                        if want < 0 {
                            got > 0
                        } else {
                            got as i64 == want
                        }
                    },
                );
            if !fits {
                return Err(InputError::WrongShape {
                    name: spec.name.clone(),
                    expected: format!("{:?}", spec.shape),
                    actual: shape.to_vec(),
                });
            }
            if spec.shape.first() == Some(&-1) {
                batch_sizes.push(shape[0]);
            }
            inputs.push(input.tensor.into_tvalue());
        }
        // What the loop did not take is not an input of the model.
        if let Some(extra) = request.inputs.first() {
            if self.is_state_input(&extra.name) {
                return Err(InputError::StateInput { name: extra.name.clone() });
            }
            return Err(InputError::Unknown { model: model(), name: extra.name.clone(), expected });
        }
        if batch_sizes.windows(2).any(|w| w[0] != w[1]) {
            return Err(InputError::BatchMismatch(batch_sizes));
        }
        let session = request.session.take();
        if let Some(id) = &session {
            if self.session.is_none() {
                return Err(InputError::Session(format!(
                    "model \"{}\" keeps no state between requests; leave out parameters.session",
                    self.name()
                )));
            }
            if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES {
                return Err(InputError::Session(format!(
                    "parameters.session must be 1 to {MAX_SESSION_ID_BYTES} bytes, it is {}",
                    id.len()
                )));
            }
        }
        let default_outputs = match self.postprocess {
            // The computed answers; the raw outputs they come from only when asked for by name.
            Some(_) => (self.raw_outputs..self.metadata.outputs.len()).collect::<Vec<_>>(),
            None => (0..self.raw_outputs).collect(),
        };
        if let Some(wanted) = &request.outputs {
            let mut names: Vec<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
            names.sort_unstable();
            if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(InputError::DuplicateOutput(twice[0].to_string()));
            }
        }
        let outputs = match &request.outputs {
            None => default_outputs.into_iter().map(|i| (i, request.binary_outputs)).collect(),
            Some(wanted) => wanted
                .iter()
                .map(|w| {
                    let index = self.metadata.outputs.iter().position(|o| o.name == w.name).ok_or_else(|| {
                        InputError::UnknownOutput {
                            model: model(),
                            name: w.name.clone(),
                            available: self.metadata.outputs.iter().map(|o| o.name.clone()).collect(),
                        }
                    })?;
                    Ok((index, w.binary.unwrap_or(request.binary_outputs)))
                })
                .collect::<Result<_, InputError>>()?,
        };
        if self.pipeline.is_some() && !matches!(pending, Some(Pending::Image(_))) {
            return Err(InputError::ImageRequired { model: model() });
        }
        let thresholds = self.check_thresholds(request.thresholds)?;
        Ok(PreparedInputs {
            inputs,
            pending,
            session,
            session_owner: String::new(),
            outputs,
            thresholds,
            geometry: None,
            frame: None,
        })
    }

    /// A detector's thresholds must make sense; other models ignore them, as any parameter they
    /// do not know.
    fn check_thresholds(&self, thresholds: Thresholds) -> Result<Thresholds, InputError> {
        if !self.postprocess.as_ref().is_some_and(|p| p.decl.detects()) {
            return Ok(Thresholds::default());
        }
        for (key, value) in [("score", thresholds.score), ("nms_iou", thresholds.nms_iou)] {
            if let Some(value) = value.filter(|v| !(0.0..=1.0).contains(v)) {
                return Err(InputError::Threshold { key, range: "between 0 and 1".into(), sent: value.to_string() });
            }
        }
        if let Some(n) = thresholds.max_detections.filter(|&n| n == 0 || n > MAX_DETECTIONS as u64) {
            return Err(InputError::Threshold {
                key: "max_detections",
                range: format!("between 1 and {MAX_DETECTIONS}"),
                sent: n.to_string(),
            });
        }
        Ok(thresholds)
    }

    pub(super) fn is_state_input(&self, name: &str) -> bool {
        self.session.as_ref().is_some_and(|s| s.state.iter().any(|(i, _, _)| self.inputs[*i].name == name))
    }

    /// A whole-payload image or audio request, for the model's `[preprocess]`.
    fn take_media(&self, media: Media) -> Result<Pending, InputError> {
        match (media, &self.preprocess) {
            (Media::Image(bytes), Some(Preprocess::Image { .. })) => Ok(Pending::Image(bytes)),
            (Media::Audio { samples, datatype, rate }, Some(Preprocess::Audio { decl, .. })) => {
                if let Some(sent) = rate.filter(|&r| r != decl.sample_rate) {
                    return Err(InputError::SampleRate {
                        model: self.name().to_string(),
                        sent,
                        expected: decl.sample_rate,
                    });
                }
                Ok(Pending::Audio(samples_to_f32(&samples, datatype)))
            }
            (media, preprocess) => Err(InputError::MediaNotAccepted {
                model: self.name().to_string(),
                sent: media.kind(),
                accepts: match preprocess {
                    Some(Preprocess::Image { .. }) => {
                        "send a PNG or JPEG file (Content Type image/png, image/jpeg)".into()
                    }
                    Some(Preprocess::Audio { decl, .. }) => {
                        format!("send mono samples (Content Type audio/pcm;format=s16le;rate={})", decl.sample_rate)
                    }
                    None => "send an Open Inference Protocol request (JSON)".into(),
                },
            }),
        }
    }

    /// The `[preprocess]` input sent in the protocol's own form: one BYTES element holding an
    /// image file, or a rank-1 INT16/FP32 tensor of audio samples. `None`: an ordinary tensor,
    /// already prepared by the client.
    fn take_encoded_input(&self, input: &InputTensor) -> Result<Option<Pending>, InputError> {
        match &self.preprocess {
            Some(Preprocess::Image { .. }) if input.datatype == DataType::Bytes => {
                let blobs = elements::<Blob>(&input.tensor).expect("BYTES inputs hold blobs");
                match blobs {
                    [image] => Ok(Some(Pending::Image(image.as_bytes().to_vec()))),
                    _ => Err(InputError::WrongShape {
                        name: input.name.clone(),
                        expected: "[1] (one image file)".into(),
                        actual: input.tensor.shape().to_vec(),
                    }),
                }
            }
            Some(Preprocess::Audio { .. })
                if input.tensor.rank() == 1 && matches!(input.datatype, DataType::Int16 | DataType::Fp32) =>
            {
                Ok(Some(Pending::Audio(samples_to_f32(&input.tensor, input.datatype))))
            }
            _ => Ok(None),
        }
    }
}

/// Audio samples as floats at full scale 1.0.
fn samples_to_f32(samples: &Tensor, datatype: DataType) -> Vec<f32> {
    match datatype {
        DataType::Int16 => audio::pcm16_to_f32(elements::<i16>(samples).expect("INT16 samples")),
        _ => elements::<f32>(samples).expect("FP32 samples").to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use super::*;
    use crate::protocol::{decode_media, decode_request};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
    }

    /// The shipped digits model: one input `pixels` FP32 [-1, 64], outputs `logits` and `probabilities`.
    fn digits() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::load("digits", &root().join("models/digits"), None).unwrap())
    }

    /// `a + b`, two FP32 [-1, 2] inputs (tests/fixtures/add).
    fn add() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::load("add", &root().join("tests/fixtures/add"), None).unwrap())
    }

    /// Silero VAD (audio at 16 kHz, session state `h` and `c`), the file `models/fetch.py` gets.
    /// The pack's silero VAD (`python3 models/fetch.py` first, as for the integration tests).
    fn vad() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        let dir = root().join("models/silero_vad");
        assert!(
            dir.join("model.onnx").is_file(),
            "models/silero_vad/model.onnx is missing: run `python3 models/fetch.py`"
        );
        MODEL.get_or_init(|| Model::load("vad", &dir, None).unwrap())
    }

    /// A 4x4 RGB image in, `[preprocess] kind = "image"` (tests/fixtures/image).
    fn image_model() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| Model::load("img", &root().join("tests/fixtures/image"), None).unwrap())
    }

    fn prepare(model: &Model, json: &str) -> Result<PreparedInputs, InputError> {
        model.prepare(&mut decode_request(json.as_bytes(), None).unwrap())
    }

    fn pixels(shape: &str, count: usize) -> String {
        format!(r#"{{"name":"pixels","shape":{shape},"datatype":"FP32","data":{:?}}}"#, vec![0.5f32; count])
    }

    #[test]
    fn a_request_that_fits_is_put_in_model_order_with_its_outputs() {
        let prepared = prepare(digits(), &format!(r#"{{"inputs":[{}]}}"#, pixels("[3,64]", 192))).unwrap();
        assert_eq!(prepared.rows(), 3);
        assert_eq!(prepared.outputs, [(0, false), (1, false)]);
        let prepared = prepare(
            digits(),
            &format!(
                r#"{{"inputs":[{}],"outputs":[{{"name":"probabilities","parameters":{{"binary_data":true}}}}]}}"#,
                pixels("[1,64]", 64)
            ),
        )
        .unwrap();
        assert_eq!(prepared.outputs, [(1, true)]);
        let ab = r#"{"inputs":[{"name":"b","shape":[1,2],"datatype":"FP32","data":[1,2]},
                               {"name":"a","shape":[1,2],"datatype":"FP32","data":[3,4]}]}"#;
        let prepared = prepare(add(), ab).unwrap();
        assert_eq!(elements::<f32>(&prepared.inputs[0]).unwrap(), &[3.0, 4.0], "a first, as in the graph");
    }

    #[test]
    fn a_missing_input_is_named_with_the_inputs_the_model_takes() {
        let err =
            prepare(digits(), r#"{"inputs":[{"name":"image","shape":[1],"datatype":"FP32","data":[1]}]}"#).unwrap_err();
        assert_eq!(
            err,
            InputError::Missing { model: "digits".into(), name: "pixels".into(), expected: vec!["pixels".into()] }
        );
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn an_input_the_model_does_not_take_is_refused() {
        let extra = r#"{"name":"extra","shape":[1],"datatype":"FP32","data":[1]}"#;
        let err = prepare(digits(), &format!(r#"{{"inputs":[{},{extra}]}}"#, pixels("[1,64]", 64))).unwrap_err();
        assert!(matches!(&err, InputError::Unknown { name, .. } if name == "extra"), "{err}");
    }

    #[test]
    fn a_wrong_datatype_is_refused() {
        let json =
            format!(r#"{{"inputs":[{{"name":"pixels","shape":[1,64],"datatype":"INT64","data":{:?}}}]}}"#, [1; 64]);
        let err = prepare(digits(), &json).unwrap_err();
        assert_eq!(
            err,
            InputError::WrongDatatype { name: "pixels".into(), expected: DataType::Fp32, actual: DataType::Int64 }
        );
    }

    #[test]
    fn a_wrong_shape_is_refused_and_an_empty_batch_too() {
        for (shape, count) in [("[1,63]", 63), ("[64]", 64), ("[1,1,64]", 64), ("[0,64]", 0)] {
            let err = prepare(digits(), &format!(r#"{{"inputs":[{}]}}"#, pixels(shape, count))).unwrap_err();
            assert!(
                matches!(&err, InputError::WrongShape { expected, .. } if expected == "[-1, 64]"),
                "{shape}: {err}"
            );
        }
    }

    #[test]
    fn inputs_that_disagree_on_the_batch_size_are_refused() {
        let json = r#"{"inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","data":[1,2]},
                                  {"name":"b","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        assert_eq!(prepare(add(), json).unwrap_err(), InputError::BatchMismatch(vec![1, 2]));
    }

    #[test]
    fn an_output_asked_for_twice_or_unknown_is_refused() {
        let outputs = r#"[{"name":"logits"},{"name":"probabilities"},{"name":"logits"}]"#;
        let json = format!(r#"{{"inputs":[{}],"outputs":{outputs}}}"#, pixels("[1,64]", 64));
        assert_eq!(prepare(digits(), &json).unwrap_err(), InputError::DuplicateOutput("logits".into()));
        let json = format!(r#"{{"inputs":[{}],"outputs":[{{"name":"softmax"}}]}}"#, pixels("[1,64]", 64));
        let err = prepare(digits(), &json).unwrap_err();
        assert!(
            matches!(&err, InputError::UnknownOutput { name, available, .. }
            if name == "softmax" && available == &["logits", "probabilities"]),
            "{err}"
        );
    }

    #[test]
    fn media_the_model_does_not_take_is_refused_saying_what_it_takes() {
        let mut request = decode_media(Some("image/png"), b"\x89PNG", &[]).unwrap().unwrap();
        let err = digits().prepare(&mut request).unwrap_err();
        assert!(matches!(err, InputError::MediaNotAccepted { sent: "an image", .. }), "{err}");
        assert!(err.to_string().contains("send an Open Inference Protocol request"), "{err}");
        let mut request = decode_media(Some("audio/pcm"), &[0; 4], &[]).unwrap().unwrap();
        let err = image_model().prepare(&mut request).unwrap_err();
        assert!(err.to_string().contains("send a PNG or JPEG file"), "{err}");
    }

    #[test]
    fn an_image_is_taken_whole_or_as_one_bytes_element_and_decoded_later() {
        let mut request = decode_media(Some("image/png"), b"not yet decoded", &[]).unwrap().unwrap();
        let prepared = image_model().prepare(&mut request).unwrap();
        assert!(matches!(&prepared.pending, Some(Pending::Image(bytes)) if bytes == b"not yet decoded"));
        assert_eq!((prepared.rows(), prepared.queued_bytes()), (1, 15));
        let two = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"BYTES","data":["a","b"]}]}"#;
        let err = prepare(image_model(), two).unwrap_err();
        assert!(matches!(&err, InputError::WrongShape { expected, .. } if expected == "[1] (one image file)"), "{err}");
    }

    #[test]
    fn audio_at_another_sample_rate_is_refused() {
        let vad = vad();
        let mut request = decode_media(Some("audio/pcm;rate=8000"), &[0; 1024], &[]).unwrap().unwrap();
        assert_eq!(
            vad.prepare(&mut request).unwrap_err(),
            InputError::SampleRate { model: "vad".into(), sent: 8000, expected: 16000 }
        );
        let mut request = decode_media(Some("audio/pcm;rate=16000"), &[0; 1024], &[]).unwrap().unwrap();
        assert!(matches!(vad.prepare(&mut request).unwrap().pending, Some(Pending::Audio(s)) if s.len() == 512));
    }

    #[test]
    fn a_session_state_input_sent_by_the_client_is_refused() {
        let vad = vad();
        let json = format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,576],"datatype":"FP32","data":{:?}}},
                          {{"name":"h","shape":[1],"datatype":"FP32","data":[0]}}]}}"#,
            vec![0.0f32; 576]
        );
        assert_eq!(prepare(vad, &json).unwrap_err(), InputError::StateInput { name: "h".into() });
    }

    #[test]
    fn session_ids_are_refused_where_there_is_no_state_or_when_out_of_bounds() {
        let json = format!(r#"{{"parameters":{{"session":"s"}},"inputs":[{}]}}"#, pixels("[1,64]", 64));
        let err = prepare(digits(), &json).unwrap_err();
        assert!(err.to_string().contains("keeps no state between requests"), "{err}");
        let vad = vad();
        for id in [String::new(), "x".repeat(MAX_SESSION_ID_BYTES + 1)] {
            let props = vec![("session".to_string(), id.clone())];
            let mut request = decode_media(Some("audio/pcm"), &[0; 1024], &props).unwrap().unwrap();
            let err = vad.prepare(&mut request).unwrap_err();
            assert!(err.to_string().contains(&format!("it is {}", id.len())), "{err}");
        }
        let props = vec![("session".to_string(), "mic-1".to_string())];
        let mut request = decode_media(Some("audio/pcm"), &[0; 1024], &props).unwrap().unwrap();
        assert_eq!(vad.prepare(&mut request).unwrap().session.as_deref(), Some("mic-1"));
    }
}
