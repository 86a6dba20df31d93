//! YOLO heads, as Ultralytics exports them: `v8` is [1, 4 + classes, candidates] (centre x, centre
//! y, width, height in input pixels, then a score per class), `v5` is [1, candidates, 5 +
//! classes] (the box, an objectness, then class probabilities; a class's score is objectness
//! times its probability). Each candidate's best class scoring above the threshold is kept, then
//! NMS per class; boxes go back to the frame's pixels, clipped to it.

use super::{best, nms, Applied, Detection, Found, Thresholds, MAX_DETECTIONS};
use crate::model::image::ImageGeometry;
use crate::model::manifest::{YoloDecl, YoloVersion};

/// The objects of one frame; `shape` is the head output's, `values` its data.
pub(crate) fn objects(
    values: &[f32],
    shape: &[usize],
    decl: &YoloDecl,
    thresholds: &Thresholds,
    geometry: &ImageGeometry,
) -> Found {
    let Applied { score: min_score, nms_iou: iou, max_detections: max } =
        Applied::new(thresholds, decl.score, decl.nms_iou, decl.max_detections);
    let (candidates, fields) = match decl.version {
        YoloVersion::V8 => (shape[2], shape[1]),
        YoloVersion::V5 => (shape[1], shape[2]),
    };
    // Field f of candidate i.
    let at = |i: usize, f: usize| match decl.version {
        YoloVersion::V8 => values[f * candidates + i],
        YoloVersion::V5 => values[i * fields + f],
    };
    let first_class = match decl.version {
        YoloVersion::V8 => 4,
        YoloVersion::V5 => 5,
    };
    let mut found = Vec::new();
    for i in 0..candidates {
        let objectness = if decl.version == YoloVersion::V5 { at(i, 4) } else { 1.0 };
        let (class, score) = (first_class..fields)
            .map(|f| (f - first_class, objectness * at(i, f)))
            .fold((0, f32::NEG_INFINITY), |best, c| if c.1 > best.1 { c } else { best });
        // Strictly above, as Ultralytics; a NaN score is never kept.
        if score.partial_cmp(&min_score) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let (cx, cy, w, h) = (at(i, 0), at(i, 1), at(i, 2), at(i, 3));
        found.push(Detection {
            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
            polygon: None,
            keypoints: Vec::new(),
            label: Some(class),
            score,
        });
    }
    let (found, count) = best(found, MAX_DETECTIONS);
    let mut detections = nms(found, iou, true, false, max);
    for detection in &mut detections {
        let [x0, y0, x1, y1] = detection.bbox;
        let [x0, y0] = geometry.to_image([x0, y0]);
        let [x1, y1] = geometry.to_image([x1, y1]);
        detection.bbox = [x0, y0, x1, y1];
    }
    Found { detections, candidates: count, cap: MAX_DETECTIONS }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(version: YoloVersion) -> YoloDecl {
        YoloDecl { output: "o".into(), version, score: 0.25, nms_iou: 0.45, max_detections: 300 }
    }

    #[test]
    fn both_layouts_decode_the_same_candidates() {
        // Three candidates, two classes: 0 and 1 overlap with different classes (both kept),
        // 2 is under the threshold.
        let boxes = [[50.0f32, 50.0, 20.0, 20.0], [52.0, 50.0, 20.0, 20.0], [10.0, 10.0, 4.0, 4.0]];
        let classes = [[0.9f32, 0.1], [0.2, 0.8], [0.1, 0.2]];
        let n = boxes.len();
        let mut v8 = vec![0.0f32; 6 * n];
        let mut v5 = vec![0.0f32; 7 * n];
        for i in 0..n {
            for f in 0..4 {
                v8[f * n + i] = boxes[i][f];
                v5[i * 7 + f] = boxes[i][f];
            }
            v5[i * 7 + 4] = 1.0;
            for c in 0..2 {
                v8[(4 + c) * n + i] = classes[i][c];
                v5[i * 7 + 5 + c] = classes[i][c];
            }
        }
        let geometry = ImageGeometry { width: 200, height: 100, scale_x: 0.5, scale_y: 0.5 };
        let a = objects(&v8, &[1, 6, n], &decl(YoloVersion::V8), &Thresholds::default(), &geometry);
        let b = objects(&v5, &[1, n, 7], &decl(YoloVersion::V5), &Thresholds::default(), &geometry);
        assert_eq!(a.detections, b.detections);
        let labels: Vec<_> = a.detections.iter().map(|d| (d.label, d.score)).collect();
        assert_eq!(labels, [(Some(0), 0.9), (Some(1), 0.8)]);
        assert_eq!(a.detections[0].bbox, [80.0, 80.0, 120.0, 100.0], "mapped back and clipped");
    }
}
