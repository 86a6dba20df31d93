//! DBNet text regions (PaddleOCR's `DBPostProcess`, as RapidOCR runs it): threshold the
//! probability map, follow each region's border, fit the smallest rotated rectangle, score it by
//! the mean probability inside, grow it (the network is trained on shrunk text), fit again, and
//! bring the corners back to the frame's pixels.
//!
//! The geometry comes from kept crates: imageproc for the borders (Suzuki-Abe, the algorithm of
//! OpenCV's `findContours`), the convex hulls, the dilation and the polygon fill; geo for growing
//! a polygon with round joins (what pyclipper's offset does for PaddleOCR). The smallest rotated
//! rectangle is computed here, on imageproc's hull: see [`min_area_rect`] for why.

use geo::{Buffer, LineString, Polygon};
use image::{GrayImage, Luma};
use imageproc::contours::find_contours;
use imageproc::drawing::draw_polygon_mut;
use imageproc::geometry::{arc_length, contour_area, convex_hull};
use imageproc::morphology::{grayscale_dilate, Mask};
use imageproc::point::Point;

use super::{Applied, Detection, Found, Thresholds};
use crate::model::image::ImageGeometry;
use crate::model::manifest::DbDecl;

/// Regions whose rectangle is thinner than this (in map pixels) are noise (PaddleOCR's `min_size`).
const MIN_SIZE: f64 = 3.0;

/// The text regions of one `[h, w]` probability map, in reading order.
pub(crate) fn regions(
    prob: &[f32],
    w: usize,
    h: usize,
    decl: &DbDecl,
    over: &Thresholds,
    geometry: &ImageGeometry,
) -> Found {
    let Applied { score: min_score, max_detections: cap, .. } =
        Applied::new(over, decl.score, 0.0, decl.max_detections);
    let mut mask = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        Luma([if prob[y as usize * w + x as usize] > decl.thresh { 255 } else { 0 }])
    });
    if decl.dilation {
        // OpenCV's dilate with a 2x2 kernel anchored at (1, 1): each pixel takes the largest of
        // itself and its left, upper and upper-left neighbours.
        let kernel = Mask::from_image(&GrayImage::from_pixel(2, 2, Luma([255])), 1, 1);
        mask = grayscale_dilate(&mask, &kernel);
    }
    let contours = find_contours::<i32>(&mask);
    drop(mask);
    let mut detections = Vec::new();
    for contour in contours.iter().take(cap) {
        let points: Vec<Point<f64>> =
            contour.points.iter().map(|p| Point::new(f64::from(p.x), f64::from(p.y))).collect();
        let Some((rect, short)) = mini_box(&points) else { continue };
        if short < MIN_SIZE {
            continue;
        }
        let score = box_score(prob, w, h, &rect);
        if score < f64::from(min_score) {
            continue;
        }
        let grown = unclip(&rect, f64::from(decl.unclip_ratio));
        let Some((rect, short)) = mini_box(&grown) else { continue };
        if short < MIN_SIZE + 2.0 {
            continue;
        }
        let corners = rect.map(|[x, y]| {
            let [x, y] = geometry.to_image([x as f32, y as f32]);
            [x.round(), y.round()]
        });
        let polygon = clockwise(corners)
            .map(|[x, y]| [x.clamp(0.0, (geometry.width - 1) as f32), y.clamp(0.0, (geometry.height - 1) as f32)]);
        // RapidOCR's filter_tag_det_res: drop what is at most 3 pixels wide or high in the frame.
        let side = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).hypot(a[1] - b[1])) as i64;
        if side(polygon[0], polygon[1]) <= 3 || side(polygon[0], polygon[3]) <= 3 {
            continue;
        }
        let xs = polygon.map(|p| p[0]);
        let ys = polygon.map(|p| p[1]);
        let bbox = [
            xs.into_iter().fold(f32::INFINITY, f32::min),
            ys.into_iter().fold(f32::INFINITY, f32::min),
            xs.into_iter().fold(f32::NEG_INFINITY, f32::max),
            ys.into_iter().fold(f32::NEG_INFINITY, f32::max),
        ];
        detections.push(Detection {
            bbox,
            polygon: Some(polygon),
            keypoints: Vec::new(),
            label: None,
            score: score as f32,
        });
    }
    Found { detections: reading_order(detections), candidates: contours.len(), cap }
}

/// The smallest rotated rectangle around `points`, its corners in PaddleOCR's order (left pair
/// upper first, then right pair upper first: top-left, top-right, bottom-right, bottom-left for
/// a level box), and its shorter side. `None` for no points.
fn mini_box(points: &[Point<f64>]) -> Option<([[f64; 2]; 4], f64)> {
    // Whole pixels, each once: imageproc's convex hull (0.27) compares points by their integer
    // parts and panics on a repeated point (its sort order is then not total), and a border
    // visits some pixels twice.
    let mut whole: Vec<(i64, i64)> = points.iter().map(|p| (p.x.round() as i64, p.y.round() as i64)).collect();
    whole.sort_unstable();
    whole.dedup();
    let points: Vec<Point<f64>> = whole.iter().map(|&(x, y)| Point::new(x as f64, y as f64)).collect();
    let hull = convex_hull(points);
    let first = *hull.first()?;
    let (mut corners, short) = min_area_rect(&hull).unwrap_or(([[first.x, first.y]; 4], 0.0));
    corners.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (left_top, left_bottom) = if corners[1][1] > corners[0][1] { (0, 1) } else { (1, 0) };
    let (right_top, right_bottom) = if corners[3][1] > corners[2][1] { (2, 3) } else { (3, 2) };
    Some(([corners[left_top], corners[right_top], corners[right_bottom], corners[left_bottom]], short))
}

/// The smallest rectangle around a convex hull (rotating calipers: one side lies on an edge of
/// the hull), as OpenCV's `minAreaRect`: its corners and its shorter side. imageproc's own
/// `min_area_rect` (0.27) skips the edge that closes the hull and rounds the corners outwards,
/// which tilts level text boxes by a pixel or two; `None` for a hull of fewer than 3 points.
fn min_area_rect(hull: &[Point<f64>]) -> Option<([[f64; 2]; 4], f64)> {
    if hull.len() < 3 {
        return None;
    }
    let mut best: Option<(f64, [[f64; 2]; 4], f64)> = None;
    for (i, a) in hull.iter().enumerate() {
        let b = hull[(i + 1) % hull.len()];
        let (dx, dy) = (b.x - a.x, b.y - a.y);
        let length = dx.hypot(dy);
        if length == 0.0 {
            continue;
        }
        let (cos, sin) = (dx / length, dy / length);
        let (mut u0, mut u1, mut v0, mut v1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for p in hull {
            let (u, v) = (p.x * cos + p.y * sin, -p.x * sin + p.y * cos);
            (u0, u1, v0, v1) = (u0.min(u), u1.max(u), v0.min(v), v1.max(v));
        }
        let area = (u1 - u0) * (v1 - v0);
        if best.as_ref().is_none_or(|(smallest, _, _)| area < *smallest) {
            let back = |u: f64, v: f64| [u * cos - v * sin, u * sin + v * cos];
            let corners = [back(u0, v0), back(u1, v0), back(u1, v1), back(u0, v1)];
            best = Some((area, corners, (u1 - u0).min(v1 - v0)));
        }
    }
    best.map(|(_, corners, short)| (corners, short))
}

/// PaddleOCR's `box_score_fast`: the mean probability over the pixels of the rectangle's filled
/// polygon (corners truncated to whole pixels), within the rectangle's bounds clipped to the map.
fn box_score(prob: &[f32], w: usize, h: usize, rect: &[[f64; 2]; 4]) -> f64 {
    let clip = |v: f64, max: usize| (v.max(0.0) as usize).min(max - 1);
    let xs = rect.map(|p| p[0]);
    let ys = rect.map(|p| p[1]);
    let x0 = clip(xs.iter().copied().fold(f64::INFINITY, f64::min).floor(), w);
    let x1 = clip(xs.iter().copied().fold(f64::NEG_INFINITY, f64::max).ceil(), w);
    let y0 = clip(ys.iter().copied().fold(f64::INFINITY, f64::min).floor(), h);
    let y1 = clip(ys.iter().copied().fold(f64::NEG_INFINITY, f64::max).ceil(), h);
    let mut mask = GrayImage::new((x1 - x0 + 1) as u32, (y1 - y0 + 1) as u32);
    let mut corners: Vec<Point<i32>> =
        rect.iter().map(|p| Point::new((p[0] - x0 as f64) as i32, (p[1] - y0 as f64) as i32)).collect();
    corners.dedup();
    while corners.len() > 1 && corners.first() == corners.last() {
        corners.pop();
    }
    match corners.len() {
        0 => return 0.0,
        1 | 2 => mask.put_pixel(corners[0].x.max(0) as u32, corners[0].y.max(0) as u32, Luma([1])),
        _ => draw_polygon_mut(&mut mask, &corners, Luma([1])),
    }
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (x, y, px) in mask.enumerate_pixels() {
        if px[0] != 0 {
            sum += f64::from(prob[(y0 + y as usize) * w + x0 + x as usize]);
            count += 1;
        }
    }
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// The rectangle grown by area * ratio / perimeter on every side, with round corners (PaddleOCR's
/// `unclip`), as the grown outline's points. As pyclipper does, the corners are truncated to
/// whole pixels before growing (the distance comes from the exact ones).
fn unclip(rect: &[[f64; 2]; 4], ratio: f64) -> Vec<Point<f64>> {
    let points: Vec<Point<f64>> = rect.iter().map(|p| Point::new(p[0], p[1])).collect();
    let perimeter = arc_length(&points, true);
    if perimeter <= 0.0 {
        return points;
    }
    let distance = contour_area(&points) * ratio / perimeter;
    let whole: Vec<(f64, f64)> = rect.iter().map(|p| (p[0].trunc(), p[1].trunc())).collect();
    let polygon = Polygon::new(LineString::from(whole), vec![]);
    let grown = polygon.buffer(distance);
    let outline: Vec<Point<f64>> =
        grown.iter().flat_map(|p| p.exterior().coords().map(|c| Point::new(c.x, c.y))).collect();
    if outline.is_empty() {
        points
    } else {
        outline
    }
}

/// Corners clockwise from the top left (RapidOCR's `order_points_clockwise`): the smallest x + y
/// first, the largest third, and of the other two the one with the smaller y - x second.
fn clockwise(corners: [[f32; 2]; 4]) -> [[f32; 2]; 4] {
    let sum = |p: &[f32; 2]| p[0] + p[1];
    let first = (0..4).min_by(|&a, &b| sum(&corners[a]).total_cmp(&sum(&corners[b]))).expect("four corners");
    let third = (0..4).rev().max_by(|&a, &b| sum(&corners[a]).total_cmp(&sum(&corners[b]))).expect("four corners");
    let rest: Vec<usize> = (0..4).filter(|&i| i != first && i != third).collect();
    let (second, fourth) = match rest.as_slice() {
        &[a, b] => {
            let diff = |i: usize| corners[i][1] - corners[i][0];
            if diff(b) < diff(a) {
                (b, a)
            } else {
                (a, b)
            }
        }
        // Two corners share the smallest and the largest sum: the rectangle is a point or a line.
        _ => return corners,
    };
    [corners[first], corners[second], corners[third], corners[fourth]]
}

fn top_left(detection: &Detection) -> [f32; 2] {
    detection.polygon.map_or([detection.bbox[0], detection.bbox[1]], |p| p[0])
}

/// Top to bottom, then left to right, lines whose tops are within 10 pixels counting as one row
/// (RapidOCR's `sorted_boxes`).
fn reading_order(mut detections: Vec<Detection>) -> Vec<Detection> {
    detections.sort_by(|a, b| {
        let (a, b) = (top_left(a), top_left(b));
        a[1].total_cmp(&b[1]).then(a[0].total_cmp(&b[0]))
    });
    for i in 0..detections.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            let (upper, lower) = (top_left(&detections[j]), top_left(&detections[j + 1]));
            if (lower[1] - upper[1]).abs() < 10.0 && lower[0] < upper[0] {
                detections.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
    detections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl() -> DbDecl {
        DbDecl { output: "p".into(), thresh: 0.3, score: 0.5, max_detections: 1000, unclip_ratio: 1.6, dilation: true }
    }

    /// A map of `w` x `h` with rectangles of probability `p` at (x0, y0, x1, y1), inclusive.
    fn map(w: usize, h: usize, rects: &[(usize, usize, usize, usize, f32)]) -> Vec<f32> {
        let mut prob = vec![0.0f32; w * h];
        for &(x0, y0, x1, y1, p) in rects {
            for y in y0..=y1 {
                for x in x0..=x1 {
                    prob[y * w + x] = p;
                }
            }
        }
        prob
    }

    fn identity(w: u32, h: u32) -> ImageGeometry {
        ImageGeometry { width: w, height: h, scale_x: 1.0, scale_y: 1.0 }
    }

    #[test]
    fn a_level_text_block_comes_back_grown_in_reading_order() {
        // Two lines: the lower one first in the map's raster order would be wrong.
        let prob = map(200, 100, &[(20, 60, 119, 79, 0.9), (10, 10, 89, 29, 0.8)]);
        let found = regions(&prob, 200, 100, &decl(), &Thresholds::default(), &identity(200, 100));
        assert_eq!(found.detections.len(), 2, "{found:?}");
        let first = &found.detections[0];
        // The dilated mask is 81 x 21 around 80 x 20 pixels of 0.8: the box's mean is 0.752.
        assert!((first.score - 0.8 * 1600.0 / 1701.0).abs() < 1e-3, "{first:?}");
        // Its rectangle, 80 x 20 from corner to corner, grows by 1600 * 1.6 / 200 = 12.8 a side
        // (clipped at the frame's edge).
        assert_eq!(first.bbox, [0.0, 0.0, 103.0, 43.0], "{first:?}");
        assert!(found.detections[1].bbox[1] > 40.0);
        assert!(found.capped().is_none());
    }

    #[test]
    fn boxes_are_scaled_back_to_the_frame() {
        let prob = map(100, 100, &[(20, 40, 79, 59, 0.9)]);
        let geometry = ImageGeometry { width: 400, height: 200, scale_x: 0.25, scale_y: 0.5 };
        let found = regions(&prob, 100, 100, &decl(), &Thresholds::default(), &geometry);
        // 60 x 20 from corner to corner in the map, grown by 12 a side: x 8..92, y 28..72, then
        // four and two times that in the frame.
        assert_eq!(found.detections[0].bbox, [32.0, 56.0, 368.0, 144.0]);
    }

    #[test]
    fn the_request_thresholds_and_the_cap_apply() {
        let prob = map(100, 60, &[(10, 10, 40, 20, 0.6), (50, 30, 90, 45, 0.95)]);
        // Box means: 0.6 * 341 / 384 = 0.53 and 0.95 * 656 / 714 = 0.87.
        let strict = Thresholds { score: Some(0.8), ..Thresholds::default() };
        let found = regions(&prob, 100, 60, &decl(), &strict, &identity(100, 60));
        assert_eq!(found.detections.len(), 1);
        assert!(found.detections[0].score > 0.8);
        let one = Thresholds { max_detections: Some(1), ..Thresholds::default() };
        let found = regions(&prob, 100, 60, &decl(), &one, &identity(100, 60));
        assert_eq!((found.detections.len(), found.candidates, found.cap), (1, 2, 1));
        assert!(found.capped().is_some());
    }

    #[test]
    fn noise_and_empty_maps_give_nothing() {
        let empty = vec![0.0f32; 64 * 64];
        assert!(regions(&empty, 64, 64, &decl(), &Thresholds::default(), &identity(64, 64)).detections.is_empty());
        // Single pixels and thin lines are under the minimum size.
        let mut specks = vec![0.0f32; 64 * 64];
        for i in (0..64 * 64).step_by(7) {
            specks[i] = 1.0;
        }
        let found = regions(&specks, 64, 64, &decl(), &Thresholds::default(), &identity(64, 64));
        assert!(found.detections.is_empty(), "{found:?}");
        let line = map(64, 64, &[(0, 30, 63, 30, 1.0)]);
        assert!(regions(&line, 64, 64, &decl(), &Thresholds::default(), &identity(64, 64)).detections.is_empty());
    }

    #[test]
    fn the_smallest_rectangle_is_no_larger_than_at_any_angle() {
        // A slanted, irregular blob: every hull edge is a candidate, the closing one included.
        let points: Vec<Point<f64>> = [(3.0, 0.0), (90.0, 4.0), (97.0, 15.0), (40.0, 17.0), (0.0, 12.0), (1.0, 5.0)]
            .iter()
            .map(|&(x, y)| Point::new(x, y))
            .collect();
        let hull = convex_hull(points.clone());
        let (corners, short) = min_area_rect(&hull).unwrap();
        let side = |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).hypot(a[1] - b[1]);
        let area = side(corners[0], corners[1]) * side(corners[1], corners[2]);
        assert!((short - side(corners[0], corners[1]).min(side(corners[1], corners[2]))).abs() < 1e-9);
        for step in 0..9000 {
            let angle = f64::from(step) / 100.0 * std::f64::consts::PI / 180.0;
            let (c, s) = (angle.cos(), angle.sin());
            let us: Vec<f64> = points.iter().map(|p| p.x * c + p.y * s).collect();
            let vs: Vec<f64> = points.iter().map(|p| -p.x * s + p.y * c).collect();
            let extent = |v: &[f64]| {
                v.iter().copied().fold(f64::NEG_INFINITY, f64::max) - v.iter().copied().fold(f64::INFINITY, f64::min)
            };
            assert!(area <= extent(&us) * extent(&vs) + 1e-6, "{area} at {angle}");
        }
        // Every point inside (or on) the rectangle.
        let [a, b, _, d] = corners;
        for p in &points {
            let (ab, ad) = ([b[0] - a[0], b[1] - a[1]], [d[0] - a[0], d[1] - a[1]]);
            let ap = [p.x - a[0], p.y - a[1]];
            let (u, v) = (ap[0] * ab[0] + ap[1] * ab[1], ap[0] * ad[0] + ap[1] * ad[1]);
            let (uu, vv) = (ab[0] * ab[0] + ab[1] * ab[1], ad[0] * ad[0] + ad[1] * ad[1]);
            assert!((-1e-6..=uu + 1e-6).contains(&u) && (-1e-6..=vv + 1e-6).contains(&v), "{p:?} outside {corners:?}");
        }
    }

    #[test]
    fn corners_go_clockwise_from_the_top_left() {
        let shuffled = [[10.0, 20.0], [0.0, 0.0], [0.0, 20.0], [10.0, 0.0]];
        assert_eq!(clockwise(shuffled), [[0.0, 0.0], [10.0, 0.0], [10.0, 20.0], [0.0, 20.0]]);
    }
}
