//! `edgeinfer bench`: the engine alone, no broker — load time, latency percentiles, throughput and
//! peak memory for one model. The baseline that end-to-end numbers (`loadgen`) are judged against.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use edgeinfer::model::{ModelCache, ModelRepository};
use serde::Serialize;
use tract_core::prelude::{Datum, IntoTValue, TValue, Tensor};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model name (a sub-directory of the model repository)
    model: String,
    /// Model repository [default: models]
    #[arg(long, value_name = "DIR", default_value = "models")]
    models: PathBuf,
    /// Seconds of measurement for each phase
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Threads for the throughput phase, each running the model in a loop [default: one per core]
    #[arg(long)]
    threads: Option<usize>,
    /// Batch size for inputs whose first dimension is -1
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// A PNG or JPEG for a model with image pre-processing: decoding, resizing and scaling it are
    /// timed as a phase of their own, and the engine phases run on the prepared image
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// Run exactly N inferences on one thread, on pseudo-random inputs in [-1, 1), and nothing
    /// else (no throughput phase, `--seconds` ignored): a fixed amount of work, for counting
    /// instructions under an emulator (bench/arm-proxy.sh)
    #[arg(long, value_name = "N", conflicts_with = "image")]
    iterations: Option<usize>,
    /// Time each node of the plan instead (one thread, on the inputs above made pseudo-random,
    /// for `--seconds`): the operators by share of the time, and the slowest nodes
    #[arg(long, conflicts_with = "iterations")]
    profile: bool,
    /// Load through the model cache in this directory (what `models.cache_dir` does for the
    /// daemon): the first run writes it, later runs show the cached load time [default: no cache]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

/// The measurements, kept apart from their printing.
#[derive(Debug, Serialize)]
struct BenchResult {
    model: String,
    batch: usize,
    load_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    preprocess: Option<Latency>,
    single_thread: Latency,
    threads: usize,
    throughput_per_s: f64,
    peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
    runs: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    per_s: f64,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.profile {
        return profile(&args);
    }
    let result = measure(&args)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?)?;
    } else {
        let l = &result.single_thread;
        outln!("model            {} (batch {})", result.model, result.batch)?;
        outln!("load+optimise    {:.1} ms", result.load_ms)?;
        if let Some(p) = &result.preprocess {
            outln!(
                "image decode+resize+scale, 1 thr  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  ({} runs)",
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.runs
            )?;
        }
        outln!(
            "latency, 1 thr   p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  ({} runs)",
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.runs
        )?;
        outln!("throughput 1 thr {:.1} inferences/s", l.per_s)?;
        outln!("throughput {} thr {:.1} inferences/s", result.threads, result.throughput_per_s)?;
        outln!("peak RSS         {:.1} MB", result.peak_rss_mb)?;
    }
    Ok(())
}

/// Operators by their share of an inference's time, then the slowest nodes.
#[derive(Debug, Serialize)]
struct ProfileResult {
    model: String,
    batch: usize,
    /// The shape of each input profiled (a free dimension takes the warm-up size).
    input_shapes: Vec<Vec<usize>>,
    runs: usize,
    /// Wall time per inference, and the part spent inside nodes.
    ms_per_run: f64,
    ms_in_nodes_per_run: f64,
    operators: Vec<OperatorTime>,
    slowest_nodes: Vec<NodeShare>,
}

#[derive(Debug, Serialize)]
struct OperatorTime {
    op: String,
    nodes: usize,
    ms_per_run: f64,
    share: f64,
}

#[derive(Debug, Serialize)]
struct NodeShare {
    name: String,
    op: String,
    ms_per_run: f64,
    share: f64,
}

/// How many of the slowest nodes `--profile` lists.
const SLOWEST_NODES: usize = 10;

fn profile(args: &BenchArgs) -> anyhow::Result<()> {
    let model =
        ModelRepository::load_one(&args.models, &args.model, args.cache_dir.clone().map(ModelCache::new).as_ref())?;
    let mut inputs = model.zero_inputs(args.batch)?;
    fill_pseudo_random(&mut inputs)?;
    if let Some(path) = &args.image {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let Some(prepared) = model.preprocess_image(&bytes) else {
            anyhow::bail!("model \"{}\" has no image pre-processing ([preprocess] kind = \"image\")", args.model);
        };
        let prepared = prepared?;
        let input = model.preprocess_input().expect("an image model has a preprocess input");
        let stacked: Vec<&Tensor> = (0..args.batch).map(|_| &prepared).collect();
        inputs[input] = Tensor::stack_tensors(0, &stacked)?.into_tvalue();
    }
    // One run first: scratch buffers, and a frame-size plan for a detector, are not profiled.
    let once = Instant::now();
    model.run(inputs.clone())?;
    let runs = ((args.seconds / once.elapsed().as_secs_f64().max(1e-6)) as usize).clamp(5, 100_000);
    let input_shapes = inputs.iter().map(|t| t.shape().to_vec()).collect();
    let profile = model.profile(inputs, runs)?;
    let in_nodes: Duration = profile.nodes.iter().map(|n| n.time).sum();
    let per_run = |d: Duration| d.as_secs_f64() * 1e3 / runs as f64;
    let share = |d: Duration| d.as_secs_f64() / in_nodes.as_secs_f64().max(1e-12);
    let mut by_op: std::collections::BTreeMap<&str, (usize, Duration)> = Default::default();
    for node in &profile.nodes {
        let entry = by_op.entry(node.op.as_str()).or_default();
        entry.0 += 1;
        entry.1 += node.time;
    }
    let mut operators: Vec<OperatorTime> = by_op
        .into_iter()
        .map(|(op, (nodes, time))| OperatorTime { op: op.into(), nodes, ms_per_run: per_run(time), share: share(time) })
        .collect();
    operators.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run));
    let mut nodes = profile.nodes.clone();
    nodes.sort_by_key(|n| std::cmp::Reverse(n.time));
    let result = ProfileResult {
        model: args.model.clone(),
        batch: args.batch,
        input_shapes,
        runs,
        ms_per_run: per_run(profile.total),
        ms_in_nodes_per_run: per_run(in_nodes),
        operators,
        slowest_nodes: nodes
            .iter()
            .take(SLOWEST_NODES)
            .map(|n| NodeShare {
                name: n.name.clone(),
                op: n.op.clone(),
                ms_per_run: per_run(n.time),
                share: share(n.time),
            })
            .collect(),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?)?;
        return Ok(());
    }
    outln!(
        "model {} (batch {}), {} runs: {:.3} ms per run, {:.3} ms of it in nodes",
        result.model,
        result.batch,
        result.runs,
        result.ms_per_run,
        result.ms_in_nodes_per_run
    )?;
    outln!("{:<28} {:>6} {:>12} {:>7}", "operator", "nodes", "ms per run", "share")?;
    for op in &result.operators {
        outln!("{:<28} {:>6} {:>12.3} {:>6.1}%", op.op, op.nodes, op.ms_per_run, op.share * 100.0)?;
    }
    outln!("slowest nodes:")?;
    for node in &result.slowest_nodes {
        outln!("  {:<50} {:<20} {:>9.3} ms {:>6.1}%", node.name, node.op, node.ms_per_run, node.share * 100.0)?;
    }
    Ok(())
}

fn measure(args: &BenchArgs) -> anyhow::Result<BenchResult> {
    let started = Instant::now();
    let cache = args.cache_dir.clone().map(ModelCache::new);
    let model = ModelRepository::load_one(&args.models, &args.model, cache.as_ref())?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut inputs = model.zero_inputs(args.batch)?;
    let phase = Duration::from_secs_f64(args.seconds);
    if let Some(n) = args.iterations {
        fill_pseudo_random(&mut inputs)?;
        let mut samples = Vec::with_capacity(n);
        let begin = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            model.run(inputs.clone())?;
            samples.push(t.elapsed());
        }
        let l = latency(&mut samples, begin.elapsed());
        let throughput_per_s = l.per_s * args.batch as f64;
        return Ok(BenchResult {
            model: args.model.clone(),
            batch: args.batch,
            load_ms,
            preprocess: None,
            single_thread: Latency { per_s: throughput_per_s, ..l },
            threads: 1,
            throughput_per_s,
            peak_rss_mb: peak_rss_mb(),
        });
    }

    let mut preprocess = None;
    if let Some(path) = &args.image {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let Some(first) = model.preprocess_image(&bytes) else {
            anyhow::bail!("model \"{}\" has no image pre-processing ([preprocess] kind = \"image\")", args.model);
        };
        let prepared = first?;
        let mut samples = Vec::new();
        let begin = Instant::now();
        while begin.elapsed() < phase {
            let t = Instant::now();
            model.preprocess_image(&bytes).expect("checked above")?;
            samples.push(t.elapsed());
        }
        preprocess = Some(latency(&mut samples, begin.elapsed()));
        // Among the graph's inputs (the order of `zero_inputs`), which include session state.
        let input = model.preprocess_input().expect("an image model has a preprocess input");
        let stacked: Vec<&Tensor> = (0..args.batch).map(|_| &prepared).collect();
        inputs[input] = Tensor::stack_tensors(0, &stacked)?.into_tvalue();
        // A detector that takes any size makes its plan for this one now: not part of the timing.
        model.run(inputs.clone())?;
    }

    let mut samples = Vec::new();
    let begin = Instant::now();
    while begin.elapsed() < phase {
        let t = Instant::now();
        model.run(inputs.clone())?;
        samples.push(t.elapsed());
    }
    let single_thread = latency(&mut samples, begin.elapsed());

    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let begin = Instant::now();
    let counts: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (model, inputs) = (&model, &inputs);
                scope.spawn(move || {
                    let mut n = 0;
                    while begin.elapsed() < phase {
                        model.run(inputs.clone()).expect("the model ran in the latency phase");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).collect()
    });
    let throughput_per_s = counts.iter().sum::<usize>() as f64 * args.batch as f64 / begin.elapsed().as_secs_f64();
    Ok(BenchResult {
        model: args.model.clone(),
        batch: args.batch,
        load_ms,
        preprocess,
        single_thread: Latency { per_s: single_thread.per_s * args.batch as f64, ..single_thread },
        threads,
        throughput_per_s,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Replaces each f32 input by the same fixed pseudo-random values in [-1, 1) (xorshift64): zeros
/// could take shortcuts that real inputs do not. Inputs of other types stay zero.
fn fill_pseudo_random(inputs: &mut [TValue]) -> anyhow::Result<()> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for input in inputs.iter_mut() {
        if input.datum_type() != f32::datum_type() {
            continue;
        }
        let values: Vec<f32> = (0..input.len())
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        *input = Tensor::from_shape(input.shape(), &values)?.into_tvalue();
    }
    Ok(())
}

fn latency(samples: &mut [Duration], elapsed: Duration) -> Latency {
    samples.sort();
    Latency {
        runs: samples.len(),
        p50_ms: super::percentile_ms(samples, 0.50),
        p90_ms: super::percentile_ms(samples, 0.90),
        p99_ms: super::percentile_ms(samples, 0.99),
        per_s: samples.len() as f64 / elapsed.as_secs_f64(),
    }
}

/// Peak resident set size of this process (VmHWM), in MB; 0 where /proc is not available.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
