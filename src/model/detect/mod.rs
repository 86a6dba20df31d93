//! Detection post-processing: the regions a detector found in a frame, as boxes (and polygons,
//! keypoints or labels) in the pixels of the image as sent, with their scores.
//!
//! Each detector kind decodes its own raw outputs (`db`, `scrfd`, `yolo`); what they share is
//! here: the request's thresholds, non-maximum suppression, and the answer's tensors.

pub(crate) mod db;
pub(crate) mod scrfd;
pub(crate) mod yolo;

use tract_core::prelude::{Tensor, TractResult};

pub use crate::protocol::Thresholds;
use crate::tensors::tensor_of;

/// The most regions any detector keeps from one frame, whatever `model.toml` or a request asks;
/// also the most candidates that go into NMS. It bounds the work and the reply of a frame full
/// of noise.
pub const MAX_DETECTIONS: usize = 10_000;

/// The thresholds one request runs with: its own where it set them, else the model's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Applied {
    pub score: f32,
    pub nms_iou: f32,
    /// At most [`MAX_DETECTIONS`].
    pub max_detections: usize,
}

impl Applied {
    /// `nms_iou` is unused by a detector without NMS (`db`).
    pub(crate) fn new(request: &Thresholds, score: f32, nms_iou: f32, max_detections: usize) -> Applied {
        Applied {
            score: request.score.unwrap_or(score),
            nms_iou: request.nms_iou.unwrap_or(nms_iou),
            max_detections: request.max_detections.map_or(max_detections, |n| n as usize).min(MAX_DETECTIONS),
        }
    }
}

/// One region found in a frame, in image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// x0, y0, x1, y1.
    pub bbox: [f32; 4],
    /// Text regions: the corners, clockwise from the top left.
    pub polygon: Option<[[f32; 2]; 4]>,
    /// Faces: eyes, nose, mouth corners.
    pub keypoints: Vec<[f32; 2]>,
    /// Objects: the class index.
    pub label: Option<usize>,
    pub score: f32,
}

impl Detection {
    fn area(&self, plus_one: f32) -> f32 {
        let [x0, y0, x1, y1] = self.bbox;
        (x1 - x0 + plus_one).max(0.0) * (y1 - y0 + plus_one).max(0.0)
    }

    /// Intersection over union of the two boxes; `plus_one` counts the edges' pixels as the
    /// reference implementations of some detectors do (SCRFD's).
    fn iou(&self, other: &Detection, plus_one: bool) -> f32 {
        let one = if plus_one { 1.0 } else { 0.0 };
        let [a0, a1, a2, a3] = self.bbox;
        let [b0, b1, b2, b3] = other.bbox;
        let w = (a2.min(b2) - a0.max(b0) + one).max(0.0);
        let h = (a3.min(b3) - a1.max(b1) + one).max(0.0);
        let inter = w * h;
        let union = self.area(one) + other.area(one) - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}

/// Greedy non-maximum suppression: best score first (ties: the earlier candidate), each dropping
/// the later ones that overlap it by more than `iou` (of its own class when `by_class`); at most
/// `max` kept.
pub fn nms(mut candidates: Vec<Detection>, iou: f32, by_class: bool, plus_one: bool, max: usize) -> Vec<Detection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for candidate in candidates {
        if kept.len() >= max {
            break;
        }
        let suppressed =
            kept.iter().any(|k| (!by_class || k.label == candidate.label) && k.iou(&candidate, plus_one) > iou);
        if !suppressed {
            kept.push(candidate);
        }
    }
    kept
}

/// The best `cap` candidates by score (ties: the earlier), and how many there were.
fn best(mut candidates: Vec<Detection>, cap: usize) -> (Vec<Detection>, usize) {
    let count = candidates.len();
    if count > cap {
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
        candidates.truncate(cap);
    }
    (candidates, count)
}

/// Which outputs a detector answers with, in order (after `boxes`).
#[derive(Debug, Clone, PartialEq)]
pub enum Answers {
    /// `polygons` [n, 4, 2], `scores` [n].
    Polygons,
    /// `scores` [n], `keypoints` [n, k, 2] (none when k is 0).
    Keypoints(usize),
    /// `scores` [n], `labels` [n] (BYTES, from these names; the class index without them).
    Labels(Vec<String>),
}

/// What a frame gave: the regions kept, and how many candidates there were before the cap.
#[derive(Debug, Default)]
pub struct Found {
    pub detections: Vec<Detection>,
    /// Candidates in the frame; more than `cap` means some were never looked at.
    pub candidates: usize,
    pub cap: usize,
}

impl Found {
    /// `boxes` [n, 4], then the outputs `answers` names.
    pub fn tensors(&self, answers: &Answers) -> TractResult<Vec<Tensor>> {
        let n = self.detections.len();
        let boxes = self.detections.iter().flat_map(|d| d.bbox).collect();
        let scores = || tensor_of(&[n], self.detections.iter().map(|d| d.score).collect());
        let mut tensors = vec![tensor_of(&[n, 4], boxes)?];
        match answers {
            Answers::Polygons => {
                let corners = self.detections.iter().flat_map(|d| d.polygon.unwrap_or_default().into_iter().flatten());
                tensors.push(tensor_of(&[n, 4, 2], corners.collect())?);
                tensors.push(scores()?);
            }
            Answers::Keypoints(k) => {
                tensors.push(scores()?);
                if *k > 0 {
                    let points = self
                        .detections
                        .iter()
                        .flat_map(|d| (0..*k).flat_map(move |i| d.keypoints.get(i).copied().unwrap_or_default()));
                    tensors.push(tensor_of(&[n, *k, 2], points.collect())?);
                }
            }
            Answers::Labels(names) => {
                tensors.push(scores()?);
                let labels = self.detections.iter().map(|d| {
                    let class = d.label.unwrap_or_default();
                    names.get(class).cloned().unwrap_or_else(|| class.to_string())
                });
                tensors.push(tensor_of(&[n], labels.collect())?);
            }
        }
        Ok(tensors)
    }

    /// Said in the reply's parameters when the cap left candidates out.
    pub fn capped(&self) -> Option<serde_json::Value> {
        (self.candidates > self.cap).then(|| {
            serde_json::json!({
                "candidates": self.candidates,
                "looked_at": self.cap,
                "why": "the frame had more candidate regions than max_detections; raise parameters.max_detections to look at more",
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4], score: f32, label: usize) -> Detection {
        Detection { bbox, polygon: None, keypoints: Vec::new(), label: Some(label), score }
    }

    #[test]
    fn nms_keeps_the_best_of_each_overlapping_group_per_class() {
        let candidates = vec![
            det([0.0, 0.0, 10.0, 10.0], 0.8, 0),
            det([1.0, 1.0, 11.0, 11.0], 0.9, 0),
            det([1.0, 1.0, 11.0, 11.0], 0.7, 1),
            det([50.0, 50.0, 60.0, 60.0], 0.6, 0),
        ];
        let kept = nms(candidates.clone(), 0.45, true, false, 100);
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, [0.9, 0.7, 0.6]);
        let kept = nms(candidates.clone(), 0.45, false, false, 100);
        assert_eq!(kept.iter().map(|d| d.score).collect::<Vec<_>>(), [0.9, 0.6]);
        assert_eq!(nms(candidates, 0.45, true, false, 2).len(), 2);
    }

    #[test]
    fn plus_one_areas_count_edge_pixels() {
        let a = det([0.0, 0.0, 9.0, 9.0], 1.0, 0);
        let b = det([5.0, 0.0, 14.0, 9.0], 1.0, 0);
        assert!((a.iou(&b, false) - 36.0 / 126.0).abs() < 1e-6);
        assert!((a.iou(&b, true) - 50.0 / 150.0).abs() < 1e-6);
    }
}
