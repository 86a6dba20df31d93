//! Audio pre-processing: mono samples become rows of `context + frame` samples, as declared by
//! `[preprocess] kind = "audio"`. A row's context is the samples just before its frame in the
//! stream, so a session's chunks give the same rows as the whole stream would.

use tract_core::prelude::Tensor;

use super::manifest::AudioDecl;

/// Samples a request sent that cannot be framed. Sent back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    #[error("{samples} samples is not a whole number of {frame}-sample frames; send chunks of k * {frame} samples")]
    PartialFrame { samples: usize, frame: usize },
    #[error("the model takes one {frame}-sample frame per request, this one has {samples} samples")]
    OneFrame { samples: usize, frame: usize },
}

/// The rows for one chunk of samples. `context` holds the stream's last `decl.context` samples
/// before this chunk (zeros at the start of a stream) and is advanced past it.
/// `one_frame`: the model's input has room for a single row.
pub fn frames(
    decl: &AudioDecl,
    samples: &[f32],
    context: &mut Vec<f32>,
    one_frame: bool,
) -> Result<Tensor, AudioError> {
    if samples.is_empty() || !samples.len().is_multiple_of(decl.frame) {
        return Err(AudioError::PartialFrame { samples: samples.len(), frame: decl.frame });
    }
    if one_frame && samples.len() != decl.frame {
        return Err(AudioError::OneFrame { samples: samples.len(), frame: decl.frame });
    }
    context.resize(decl.context, 0.0);
    let rows = samples.len() / decl.frame;
    let width = decl.context + decl.frame;
    let mut stream = Vec::with_capacity(decl.context + samples.len());
    stream.extend_from_slice(context);
    stream.extend_from_slice(samples);
    let mut data = Vec::with_capacity(rows * width);
    for row in 0..rows {
        data.extend_from_slice(&stream[row * decl.frame..][..width]);
    }
    context.copy_from_slice(&stream[stream.len() - decl.context..]);
    Ok(Tensor::from_shape(&[rows, width], &data).expect("rows * width values"))
}

/// PCM16 samples as the model's floats (full scale = 1.0).
pub fn pcm16_to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| s as f32 / 32768.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::elements;

    fn decl(frame: usize, context: usize) -> AudioDecl {
        AudioDecl { input: "input".into(), sample_rate: 16000, frame, context }
    }

    #[test]
    fn chunks_give_the_rows_of_the_whole_stream() {
        let d = decl(4, 2);
        let stream: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let whole = frames(&d, &stream, &mut Vec::new(), false).unwrap();
        assert_eq!(whole.shape(), &[4, 6]);
        let mut context = Vec::new();
        let first = frames(&d, &stream[..8], &mut context, false).unwrap();
        let second = frames(&d, &stream[8..], &mut context, false).unwrap();
        let chunked: Vec<f32> = [first, second].iter().flat_map(|t| elements::<f32>(t).unwrap().to_vec()).collect();
        assert_eq!(chunked, elements::<f32>(&whole).unwrap());
        assert_eq!(&elements::<f32>(&whole).unwrap()[..6], &[0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(&elements::<f32>(&whole).unwrap()[6..12], &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(context, vec![15.0, 16.0]);
    }

    #[test]
    fn partial_frames_are_refused() {
        let err = frames(&decl(512, 64), &[0.0; 700], &mut Vec::new(), false).unwrap_err();
        assert!(err.to_string().contains("700 samples"), "{err}");
        assert!(frames(&decl(512, 64), &[], &mut Vec::new(), false).is_err());
        let err = frames(&decl(512, 64), &[0.0; 1024], &mut Vec::new(), true).unwrap_err();
        assert!(err.to_string().contains("one 512-sample frame"), "{err}");
    }

    #[test]
    fn pcm16_full_scale_is_one() {
        assert_eq!(pcm16_to_f32(&[-32768, 0, 16384]), vec![-1.0, 0.0, 0.5]);
    }
}
