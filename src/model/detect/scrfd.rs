//! SCRFD faces (InsightFace's detector, decoded as the `scrfd` package does): for each stride,
//! anchors sit at the top-left corner of every grid cell, `anchors` per cell; a box is four
//! distances (left, top, right, bottom) from its anchor and each keypoint an offset, all in
//! strides. Candidates at or above the score go back to the frame's pixels, then through NMS
//! (areas counting edge pixels, as the reference does). Boxes are not clipped to the frame: a
//! face cut by the edge keeps its full extent, as SCRFD's own code gives it.

use super::{best, nms, Applied, Detection, Found, Thresholds, MAX_DETECTIONS};
use crate::model::image::ImageGeometry;
use crate::model::manifest::ScrfdDecl;

/// One stride's head outputs, flattened: scores [n], boxes [n * 4], keypoints [n * 2k] (or empty).
pub(crate) struct Level<'a> {
    pub scores: &'a [f32],
    pub boxes: &'a [f32],
    pub keypoints: &'a [f32],
}

/// The faces of one frame; `input_width` is the model input's width (the grid's extent).
pub(crate) fn faces(
    levels: &[Level<'_>],
    input_width: usize,
    decl: &ScrfdDecl,
    thresholds: &Thresholds,
    geometry: &ImageGeometry,
) -> Found {
    let Applied { score: min_score, nms_iou: iou, max_detections: max } =
        Applied::new(thresholds, decl.score, decl.nms_iou, decl.max_detections);
    let back = |x: f32, y: f32| [x / geometry.scale_x, y / geometry.scale_y];
    let mut candidates = Vec::new();
    for (level, &stride) in levels.iter().zip(&decl.strides) {
        let columns = (input_width / stride).max(1);
        let k = level.keypoints.len() / level.scores.len().max(1) / 2;
        let s = stride as f32;
        for (i, &score) in level.scores.iter().enumerate() {
            if score < min_score {
                continue;
            }
            let cell = i / decl.anchors;
            let (cx, cy) = ((cell % columns) as f32 * s, (cell / columns) as f32 * s);
            let d = &level.boxes[i * 4..i * 4 + 4];
            let [x0, y0] = back(cx - d[0] * s, cy - d[1] * s);
            let [x1, y1] = back(cx + d[2] * s, cy + d[3] * s);
            let keypoints = (0..k)
                .map(|j| {
                    let p = &level.keypoints[(i * k + j) * 2..];
                    back(cx + p[0] * s, cy + p[1] * s)
                })
                .collect();
            candidates.push(Detection { bbox: [x0, y0, x1, y1], polygon: None, keypoints, label: None, score });
        }
    }
    let (candidates, count) = best(candidates, MAX_DETECTIONS);
    Found { detections: nms(candidates, iou, false, true, max), candidates: count, cap: MAX_DETECTIONS }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_decode_to_boxes_and_keypoints_in_frame_pixels() {
        let decl = ScrfdDecl {
            scores: vec![],
            boxes: vec![],
            keypoints: vec![],
            strides: vec![8],
            anchors: 2,
            score: 0.5,
            nms_iou: 0.5,
            max_detections: 10,
        };
        // A 16-wide input: 2 columns of cells, 2 anchors each; cell 3 (column 1, row 1) at (8, 8).
        let mut scores = vec![0.0f32; 8];
        scores[6] = 0.9; // cell 3, anchor 0
        scores[7] = 0.8; // the same face from anchor 1: suppressed
        let mut boxes = vec![0.0f32; 32];
        boxes[24..28].copy_from_slice(&[0.5, 0.25, 1.0, 2.0]);
        boxes[28..32].copy_from_slice(&[0.5, 0.25, 1.0, 2.0]);
        let mut keypoints = vec![0.0f32; 16];
        keypoints[12..14].copy_from_slice(&[0.5, -0.5]);
        let geometry = ImageGeometry { width: 32, height: 32, scale_x: 0.5, scale_y: 0.5 };
        let levels = [Level { scores: &scores, boxes: &boxes, keypoints: &keypoints }];
        let found = faces(&levels, 16, &decl, &Thresholds::default(), &geometry);
        assert_eq!(found.detections.len(), 1, "{found:?}");
        let face = &found.detections[0];
        assert_eq!(face.bbox, [8.0, 12.0, 32.0, 48.0]);
        assert_eq!(face.keypoints, vec![[24.0, 8.0]]);
        assert_eq!(face.score, 0.9);
        let strict = Thresholds { score: Some(0.95), ..Thresholds::default() };
        assert!(faces(&levels, 16, &decl, &strict, &geometry).detections.is_empty());
    }
}
