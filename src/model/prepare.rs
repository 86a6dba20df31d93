//! Checking a decoded request against the model's contract, before it is queued: the code most
//! exposed to network input. Every refusal is an [`InputError`] sent back to the client.

use tract_core::prelude::*;

use super::session::MAX_SESSION_ID_BYTES;
use super::{audio, InputError, Model, Preprocess};
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
        Ok(PreparedInputs { inputs, pending, session, session_owner: String::new(), outputs })
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
