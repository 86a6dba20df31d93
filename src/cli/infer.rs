//! `edgeinfer infer`: one local inference, no broker. For checking a model on a board, and for
//! producing reference outputs.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use edgeinfer::model::{Model, ModelRepository};
use edgeinfer::protocol::request::RequestIdentity;
use edgeinfer::protocol::{decode_reply, decode_request, encode_response, DataType, InferRequest, InputTensor, Media};
use ndarray_npy::ReadNpyExt;
use tract_core::prelude::{Datum, Tensor};

#[derive(Debug, Args)]
pub struct InferArgs {
    /// Model name (a sub-directory of the model repository)
    model: String,
    /// Model repository [default: models, or models.repository from --config]
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Config file whose models.repository to use
    #[arg(long, short = 'c', env = "EDGEINFER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// An OIP JSON request; a .npy array for a single-input model; a .png/.jpg image or a .wav
    /// recording (16-bit mono) for a model with [preprocess] [default: stdin, JSON]
    #[arg(long, short = 'i', value_name = "FILE")]
    input: Option<PathBuf>,
}

pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let dir = super::models_dir(args.models, args.config.as_ref())?;
    let model = ModelRepository::load_one(&dir, &args.model, None)?;
    let extension = args.input.as_ref().and_then(|p| p.extension()).map(|e| e.to_string_lossy().to_lowercase());
    let mut request = match (&args.input, extension.as_deref()) {
        (Some(path), Some("npy")) => npy_request(&model, path)?,
        (Some(path), Some("png" | "jpg" | "jpeg")) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            media_request(Media::Image(bytes))
        }
        (Some(path), Some("wav")) => {
            // A whole recording: its last frame is padded with silence, as a streaming client would.
            let frame = model.audio().map_or(1, |audio| audio.frame);
            media_request(wav_samples(path, frame)?)
        }
        (Some(path), _) => json_request(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)?,
        (None, _) => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("reading the request from stdin")?;
            json_request(&bytes)?
        }
    };
    let prepared = model.prepare(&mut request)?;
    let answer = model.answer(prepared)?;
    let reply = encode_response(
        model.name(),
        Some(model.version()),
        request.identity.id.as_deref(),
        answer.parameters.as_ref(),
        &answer.tensors(),
    )?;
    let shown = decode_reply(&reply.payload, reply.header_len)?;
    match reply.header_len {
        // JSON replies are printed as they came, field order included.
        None => outln!("{}", String::from_utf8_lossy(&reply.payload))?,
        Some(_) => outln!("{}", serde_json::to_string(&shown)?)?,
    }
    Ok(())
}

fn media_request(media: Media) -> InferRequest {
    InferRequest {
        identity: RequestIdentity::default(),
        inputs: Vec::new(),
        outputs: None,
        binary_outputs: false,
        timeout: None,
        session: None,
        media: Some(media),
        thresholds: Default::default(),
    }
}

/// A WAV file's samples, which must be 16-bit PCM mono, zero-padded to a whole number of
/// `frame`s; the rate goes along to be checked.
fn wav_samples(path: &Path, frame: usize) -> anyhow::Result<Media> {
    let reader = hound::WavReader::open(path).with_context(|| format!("reading {}", path.display()))?;
    let spec = reader.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        anyhow::bail!(
            "{}: {} channel(s), {} bit {:?}; send 16-bit PCM mono (sox in.wav -c 1 -b 16 out.wav)",
            path.display(),
            spec.channels,
            spec.bits_per_sample,
            spec.sample_format
        );
    }
    let mut samples = reader.into_samples::<i16>().collect::<Result<Vec<i16>, _>>()?;
    samples.resize(samples.len().div_ceil(frame.max(1)) * frame.max(1), 0);
    let len = samples.len();
    Ok(Media::Audio {
        samples: Tensor::from_shape(&[len], &samples)?,
        datatype: DataType::Int16,
        rate: Some(spec.sample_rate),
    })
}

fn json_request(bytes: &[u8]) -> anyhow::Result<InferRequest> {
    decode_request(bytes, None).map_err(|failure| anyhow::anyhow!(failure.error))
}

/// Wraps a NumPy array as the request's only input, read with the element type the model expects.
fn npy_request(model: &Model, path: &Path) -> anyhow::Result<InferRequest> {
    let [input] = model.metadata().inputs.as_slice() else {
        anyhow::bail!(
            "a .npy input needs a single-input model; \"{}\" has several: send an OIP JSON request",
            model.name()
        );
    };
    fn read<T: Datum + ndarray_npy::ReadableElement>(path: &Path) -> anyhow::Result<Tensor> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let array = tract_core::ndarray::ArrayD::<T>::read_npy(file)
            .with_context(|| format!("{}: not a .npy array of {}", path.display(), T::name()))?;
        Ok(array.into())
    }
    let tensor = match input.datatype {
        DataType::Fp32 => read::<f32>(path)?,
        DataType::Fp64 => read::<f64>(path)?,
        DataType::Int8 => read::<i8>(path)?,
        DataType::Int16 => read::<i16>(path)?,
        DataType::Int32 => read::<i32>(path)?,
        DataType::Int64 => read::<i64>(path)?,
        DataType::Uint8 => read::<u8>(path)?,
        DataType::Uint16 => read::<u16>(path)?,
        DataType::Uint32 => read::<u32>(path)?,
        DataType::Uint64 => read::<u64>(path)?,
        DataType::Bool => read::<bool>(path)?,
        other => anyhow::bail!("input \"{}\" is {other}: .npy input is not supported for it", input.name),
    };
    Ok(InferRequest {
        identity: RequestIdentity::default(),
        inputs: vec![InputTensor { name: input.name.clone(), datatype: input.datatype, tensor }],
        outputs: None,
        binary_outputs: false,
        timeout: None,
        session: None,
        media: None,
        thresholds: Default::default(),
    })
}
