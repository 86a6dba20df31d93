//! Image pre-processing: a PNG or JPEG file becomes the model's FP32 input tensor, as declared by
//! `[preprocess] kind = "image"` (resize mode, channel order, layout, scaling).
//!
//! Runs on an inference thread, never on the MQTT side: decoding a camera frame costs milliseconds.

use std::io::Cursor;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use tract_core::prelude::Tensor;

use super::manifest::{ColorOrder, ImageDecl, Interpolation, Layout, LimitType, ResizeMode};

/// Largest image side accepted, whatever the pixel count.
const MAX_SIDE: u32 = 8192;
/// Largest side of a frame resized for a detector that takes any size (`limit_side`): what a
/// sliver of a frame would otherwise be scaled up to is bounded (4096 x 736 x 3 FP32 = 36 MB).
const MAX_ANY_SIZE_SIDE: usize = 4096;
/// How long a decode waits for its share of the decode budget before the request is `busy`.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Why request bytes could not be turned into the model's input. Sent back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the image is neither PNG nor JPEG (first bytes {0}); send a PNG or JPEG file")]
    UnknownFormat(String),
    #[error("cannot decode the {format}: {reason}")]
    Decode { format: &'static str, reason: String },
    #[error("the image is {width}x{height}; at most {MAX_SIDE} pixels per side are accepted")]
    TooLarge { width: u32, height: u32 },
    #[error("the image is {width}x{height} = {pixels} pixels; at most {max} are accepted (requests.max_image_pixels)")]
    TooManyPixels { width: u32, height: u32, pixels: u64, max: u64 },
    #[error(
        "decoding this {width}x{height} image needs {needed} bytes, more than all image decoding may use at once \
         ({budget} bytes, requests.max_decode_bytes)"
    )]
    OverBudget { width: u32, height: u32, needed: u64, budget: u64 },
    #[error("image decoding is at its memory limit (requests.max_decode_bytes) with other images; retry later")]
    Busy,
}

/// Memory for decoding images, shared by every inference thread of every model: an image that
/// decodes to far more than its file (an all-zero PNG compresses 1000:1) takes its share before
/// it is decoded, so a burst of them waits instead of multiplying by the number of threads.
#[derive(Debug)]
pub struct DecodeBudget {
    max_pixels: u64,
    total: u64,
    free: Mutex<u64>,
    room: Condvar,
}

/// Bytes of a [`DecodeBudget`] held until dropped.
#[derive(Debug)]
struct Reservation<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        *self.budget.free.lock().unwrap_or_else(|e| e.into_inner()) += self.bytes;
        self.budget.room.notify_all();
    }
}

static BUDGET: OnceLock<DecodeBudget> = OnceLock::new();

impl DecodeBudget {
    /// Sets the process's decode limits (`requests.max_image_pixels`, `requests.max_decode_bytes`);
    /// the first call wins. Without one, the config file's defaults apply.
    pub fn configure(max_pixels: u64, max_decode_bytes: u64) {
        let _ = BUDGET.set(DecodeBudget::new(max_pixels, max_decode_bytes));
    }

    fn new(max_pixels: u64, total: u64) -> DecodeBudget {
        DecodeBudget { max_pixels, total, free: Mutex::new(total), room: Condvar::new() }
    }

    fn global() -> &'static DecodeBudget {
        BUDGET.get_or_init(|| {
            let defaults = crate::config::RequestsConfig::default();
            DecodeBudget::new(defaults.max_image_pixels, defaults.max_decode_bytes as u64)
        })
    }

    /// Waits up to `wait` until `bytes` are free, and holds them.
    fn reserve(&self, (width, height): (u32, u32), bytes: u64, wait: Duration) -> Result<Reservation<'_>, ImageError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(ImageError::TooManyPixels { width, height, pixels, max: self.max_pixels });
        }
        if bytes > self.total {
            return Err(ImageError::OverBudget { width, height, needed: bytes, budget: self.total });
        }
        let until = Instant::now() + wait;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free < bytes {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ImageError::Busy);
            }
            free = self.room.wait_timeout(free, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        *free -= bytes;
        Ok(Reservation { budget: self, bytes })
    }
}

/// The tensor geometry an image is prepared for: read once from the model's input shape.
#[derive(Debug, Clone)]
pub struct ImageTarget {
    pub decl: ImageDecl,
    /// `None`: any height or width (`resize = "limit_side"`): the frame decides.
    pub height: Option<usize>,
    pub width: Option<usize>,
}

/// Where a frame's pixels went in the model's input: what a detector needs to give its boxes back
/// in the pixels of the image as sent. Every resize mode puts the image at the top left, so one
/// scale per axis undoes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageGeometry {
    /// The image as sent.
    pub width: u32,
    pub height: u32,
    /// Input pixels per image pixel, across and down.
    pub scale_x: f32,
    pub scale_y: f32,
}

impl ImageGeometry {
    /// An input-pixel point in the image's own pixels, clipped to the image.
    pub fn to_image(&self, [x, y]: [f32; 2]) -> [f32; 2] {
        [(x / self.scale_x).clamp(0.0, self.width as f32), (y / self.scale_y).clamp(0.0, self.height as f32)]
    }
}

impl ImageTarget {
    /// `shape` is the model input's declared shape: [N, 3, H, W] (NCHW) or [N, H, W, 3] (NHWC),
    /// N being 1 or the batch dimension; H and W are -1 exactly when the resize mode is
    /// `limit_side`. `None` when it is not such a shape.
    pub fn new(decl: &ImageDecl, shape: &[i64]) -> Option<ImageTarget> {
        let [n, a, b, c] = shape else {
            return None;
        };
        let (channels, height, width) = match decl.layout {
            Layout::Nchw => (*a, *b, *c),
            Layout::Nhwc => (*c, *a, *b),
        };
        let any_size = decl.resize == ResizeMode::LimitSide;
        let side = |d: i64| match (d, any_size) {
            (-1, true) => Some(None),
            (d, false) if d >= 1 => Some(Some(d as usize)),
            _ => None,
        };
        if !(*n == 1 || *n == -1) || channels != 3 {
            return None;
        }
        Some(ImageTarget { decl: decl.clone(), height: side(height)?, width: side(width)? })
    }

    /// Decodes, resizes and scales one image into a [1, ...] tensor of the model's input shape.
    pub fn tensor(&self, bytes: &[u8]) -> Result<(Tensor, ImageGeometry), ImageError> {
        // The decoded frame counts against the decode budget until it is resized away.
        let (rgb, reservation) = decode(bytes)?;
        let prepared = self.tensor_of(&rgb);
        drop((rgb, reservation));
        Ok(prepared)
    }

    /// [`tensor`](ImageTarget::tensor) for an image already decoded (a crop of a frame).
    pub fn tensor_of(&self, rgb: &image::RgbImage) -> (Tensor, ImageGeometry) {
        let (w, h) = (rgb.width(), rgb.height());
        let (new_w, new_h) = self.resized_size(w as usize, h as usize);
        let resized;
        let pixels = if (new_w, new_h) == (w as usize, h as usize) {
            rgb.as_raw().as_slice()
        } else {
            resized = resize(rgb.as_raw(), w, h, new_w as u32, new_h as u32, self.decl.interpolation);
            &resized
        };
        let (th, tw) = (self.height.unwrap_or(new_h), self.width.unwrap_or(new_w));
        let geometry =
            ImageGeometry { width: w, height: h, scale_x: new_w as f32 / w as f32, scale_y: new_h as f32 / h as f32 };
        (self.fill(pixels, new_w, new_h, th, tw), geometry)
    }

    /// The size the image is resized to before padding.
    fn resized_size(&self, w: usize, h: usize) -> (usize, usize) {
        let d = &self.decl;
        let (tw, th) = (self.width.unwrap_or(w), self.height.unwrap_or(h));
        match d.resize {
            ResizeMode::Stretch => (tw, th),
            ResizeMode::FitHeight => {
                let scaled = (th as f64 * w as f64 / h as f64).ceil() as usize;
                (scaled.clamp(1, tw), th)
            }
            ResizeMode::Letterbox => {
                let scale = (tw as f64 / w as f64).min(th as f64 / h as f64);
                let fit = |v: usize, max: usize| ((v as f64 * scale).round() as usize).clamp(1, max);
                (fit(w, tw), fit(h, th))
            }
            ResizeMode::LimitSide => {
                let limit = f64::from(d.limit_side_len);
                let ratio = match d.limit_type {
                    LimitType::Min if (w.min(h) as f64) < limit => limit / w.min(h) as f64,
                    LimitType::Max if (w.max(h) as f64) > limit => limit / w.max(h) as f64,
                    _ => 1.0,
                };
                // A sliver (8192 x 1) brought up to 736 high would be millions of pixels wide.
                let ratio = ratio.min(MAX_ANY_SIZE_SIDE as f64 / w.max(h) as f64);
                // PaddleOCR's DetResizeForTest: truncate, then round to the multiple (at least one).
                let multiple = f64::from(d.size_multiple);
                let side = |v: usize| {
                    let scaled = (v as f64 * ratio).trunc();
                    (((scaled / multiple).round() * multiple) as usize).max(d.size_multiple as usize)
                };
                (side(w), side(h))
            }
        }
    }

    /// Scales RGB pixels into a padded tensor of the model's layout and channel order, `th` x `tw`.
    fn fill(&self, rgb: &[u8], w: usize, h: usize, th: usize, tw: usize) -> Tensor {
        let d = &self.decl;
        let order = match d.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };
        // Per RGB channel: value = pixel * scale' + offset, folding scale, mean and std together.
        let gain: [f32; 3] = std::array::from_fn(|c| d.scale / d.std[c]);
        let offset: [f32; 3] = std::array::from_fn(|c| -d.mean[c] / d.std[c]);
        let mut data = vec![d.pad_value; 3 * th * tw];
        for y in 0..h.min(th) {
            for x in 0..w.min(tw) {
                let px = &rgb[(y * w + x) * 3..][..3];
                for (slot, &c) in order.iter().enumerate() {
                    let value = px[c] as f32 * gain[c] + offset[c];
                    let at = match d.layout {
                        Layout::Nchw => (slot * th + y) * tw + x,
                        Layout::Nhwc => (y * tw + x) * 3 + slot,
                    };
                    data[at] = value;
                }
            }
        }
        let shape = match d.layout {
            Layout::Nchw => [1, 3, th, tw],
            Layout::Nhwc => [1, th, tw, 3],
        };
        Tensor::from_shape(&shape, &data).expect("data has the shape's length")
    }
}

/// A decoded frame, holding its share of the decode budget while it lives: what a pipeline crops
/// its regions from after the detector has run.
pub struct Frame {
    pub rgb: image::RgbImage,
    _reservation: Reservation<'static>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}x{})", self.rgb.width(), self.rgb.height())
    }
}

impl Frame {
    pub fn decode(bytes: &[u8]) -> Result<Frame, ImageError> {
        let (rgb, reservation) = decode(bytes)?;
        Ok(Frame { rgb, _reservation: reservation })
    }
}

fn decode(bytes: &[u8]) -> Result<(image::RgbImage, Reservation<'static>), ImageError> {
    decode_within(bytes, DecodeBudget::global(), BUDGET_WAIT)
}

/// Decodes to RGB once `budget` holds room for the decoded pixels (at the file's own depth) and
/// their RGB copy; the header is read first, so nothing is allocated for an image refused. The
/// reservation comes back with the image: keep it while the image lives.
fn decode_within<'b>(
    bytes: &[u8],
    budget: &'b DecodeBudget,
    wait: Duration,
) -> Result<(image::RgbImage, Reservation<'b>), ImageError> {
    let format = image::guess_format(bytes).ok().filter(|f| matches!(f, ImageFormat::Png | ImageFormat::Jpeg));
    let Some(format) = format else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(ImageError::UnknownFormat(head.join(" ")));
    };
    let name = if format == ImageFormat::Png { "PNG" } else { "JPEG" };
    let decode_error = |e: image::ImageError| ImageError::Decode { format: name, reason: e.to_string() };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(budget.total);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
                .into_dimensions()
                .ok()
                .or_else(|| png_size(bytes))
                .unwrap_or((u32::MAX, u32::MAX));
            ImageError::TooLarge { width, height }
        }
        other => decode_error(other),
    })?;
    let (width, height) = decoder.dimensions();
    let rgb_copy =
        if decoder.color_type() == image::ColorType::Rgb8 { 0 } else { u64::from(width) * u64::from(height) * 3 };
    let reservation = budget.reserve((width, height), decoder.total_bytes().saturating_add(rgb_copy), wait)?;
    let decoded = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    Ok((decoded.into_rgb8(), reservation))
}

/// The size a PNG's header declares (its first chunk, IHDR, at a fixed place), for the message
/// about a file refused before its pixels are read (the decoder wants more than the header to
/// tell its size).
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let field = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    (bytes.get(12..16) == Some(b"IHDR")).then(|| field(16).zip(field(20))).flatten()
}

/// Resize of packed RGB pixels: bilinear (triangle-filter convolution, as Pillow's BILINEAR) or nearest.
fn resize(rgb: &[u8], w: u32, h: u32, new_w: u32, new_h: u32, interpolation: Interpolation) -> Vec<u8> {
    let src = ImageRef::new(w, h, rgb, PixelType::U8x3).expect("buffer is w*h*3 bytes");
    let mut dst = Image::new(new_w, new_h, PixelType::U8x3);
    let algorithm = match interpolation {
        Interpolation::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        Interpolation::Nearest => ResizeAlg::Nearest,
    };
    let options = ResizeOptions::new().resize_alg(algorithm);
    Resizer::new().resize(&src, &mut dst, &options).expect("same pixel type on both sides");
    dst.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(resize: ResizeMode, color: ColorOrder, layout: Layout) -> ImageDecl {
        ImageDecl {
            input: "x".into(),
            resize,
            color,
            layout,
            interpolation: Interpolation::Bilinear,
            scale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
            pad_value: -7.0,
            limit_type: LimitType::Min,
            limit_side_len: 736,
            size_multiple: 32,
        }
    }

    fn png(w: u32, h: u32, pixel: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb(pixel));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn fit_height_scales_pads_right_and_swaps_to_bgr() {
        let target =
            ImageTarget::new(&decl(ResizeMode::FitHeight, ColorOrder::Bgr, Layout::Nchw), &[1, 3, 4, 16]).unwrap();
        // 2 wide, 1 high -> 8 wide at height 4: columns 8.. are padding.
        let (t, geometry) = target.tensor(&png(2, 1, [255, 0, 51])).unwrap();
        assert_eq!((geometry.scale_x, geometry.scale_y), (4.0, 4.0));
        assert_eq!(t.shape(), &[1, 3, 4, 16]);
        let v = crate::tensors::elements::<f32>(&t).unwrap();
        let at = |c: usize, y: usize, x: usize| v[(c * 4 + y) * 16 + x];
        assert!((at(0, 0, 0) - (51.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6, "B first");
        assert!((at(2, 3, 7) - 1.0).abs() < 1e-6, "R last");
        assert_eq!(at(1, 2, 8), -7.0);
        assert_eq!(at(0, 3, 15), -7.0);
    }

    #[test]
    fn stretch_fills_everything_in_nhwc() {
        let target =
            ImageTarget::new(&decl(ResizeMode::Stretch, ColorOrder::Rgb, Layout::Nhwc), &[-1, 5, 3, 3]).unwrap();
        let (t, _) = target.tensor(&png(7, 2, [0, 255, 0])).unwrap();
        assert_eq!(t.shape(), &[1, 5, 3, 3]);
        let v = crate::tensors::elements::<f32>(&t).unwrap();
        assert!(v.chunks(3).all(|p| p == [-1.0, 1.0, -1.0]), "{v:?}");
    }

    #[test]
    fn letterbox_keeps_the_aspect_ratio() {
        let target =
            ImageTarget::new(&decl(ResizeMode::Letterbox, ColorOrder::Rgb, Layout::Nchw), &[1, 3, 10, 10]).unwrap();
        assert_eq!(target.resized_size(40, 20), (10, 5));
        assert_eq!(target.resized_size(20, 40), (5, 10));
    }

    #[test]
    fn limit_side_scales_the_short_side_up_and_rounds_to_the_stride() {
        let mut d = decl(ResizeMode::LimitSide, ColorOrder::Bgr, Layout::Nchw);
        let target = ImageTarget::new(&d, &[1, 3, -1, -1]).unwrap();
        // 1280x720: 720 < 736, so x 736/720 -> 1308.4 x 736 -> 1312 x 736.
        assert_eq!(target.resized_size(1280, 720), (1312, 736));
        // 1920x1080 is left alone but for the rounding: 1080 -> 1088.
        assert_eq!(target.resized_size(1920, 1080), (1920, 1088));
        assert_eq!(target.resized_size(1, 1), (736, 736));
        // A sliver is not scaled up past 4096 pixels a side.
        assert_eq!(target.resized_size(8192, 1), (4096, 32));
        assert_eq!(target.resized_size(3, 2000), (32, 4096));
        d.limit_type = LimitType::Max;
        d.limit_side_len = 960;
        let target = ImageTarget::new(&d, &[1, 3, -1, -1]).unwrap();
        assert_eq!(target.resized_size(1920, 1080), (960, 544));
        assert_eq!(target.resized_size(10, 10), (32, 32));
        let (t, geometry) = target.tensor(&png(64, 40, [1, 2, 3])).unwrap();
        assert_eq!(t.shape(), &[1, 3, 32, 64]);
        assert_eq!(geometry.to_image([64.0, 32.0]), [64.0, 40.0]);
        assert!(ImageTarget::new(&d, &[1, 3, 32, -1]).is_none(), "both sides follow the frame");
        let fixed = decl(ResizeMode::Stretch, ColorOrder::Rgb, Layout::Nchw);
        assert!(ImageTarget::new(&fixed, &[1, 3, -1, -1]).is_none(), "other modes need a size");
    }

    #[test]
    fn bad_bytes_are_named() {
        let target =
            ImageTarget::new(&decl(ResizeMode::Stretch, ColorOrder::Rgb, Layout::Nchw), &[1, 3, 4, 4]).unwrap();
        let err = target.tensor(b"GIF89a....").unwrap_err();
        assert!(err.to_string().contains("neither PNG nor JPEG"), "{err}");
        let mut truncated = png(30, 30, [1, 2, 3]);
        truncated.truncate(truncated.len() / 2);
        let err = target.tensor(&truncated).unwrap_err();
        assert!(matches!(err, ImageError::Decode { format: "PNG", .. }), "{err}");
    }

    #[test]
    fn huge_declared_sizes_are_refused_before_decoding() {
        let target =
            ImageTarget::new(&decl(ResizeMode::Stretch, ColorOrder::Rgb, Layout::Nchw), &[1, 3, 4, 4]).unwrap();
        let err = target.tensor(&png(9000, 1, [0, 0, 0])).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { width: 9000, height: 1 }), "{err}");
    }

    #[test]
    fn the_decode_budget_refuses_what_never_fits_and_makes_the_rest_wait() {
        let frame = png(100, 100, [9, 9, 9]);
        let needed = 100 * 100 * 3;
        let budget = DecodeBudget::new(100 * 100, needed);
        assert_eq!(decode_within(&frame, &budget, Duration::ZERO).unwrap().0.dimensions(), (100, 100));
        let err = decode_within(&png(101, 100, [0; 3]), &budget, Duration::ZERO).unwrap_err();
        assert!(matches!(err, ImageError::TooManyPixels { pixels: 10100, max: 10000, .. }), "{err}");
        let small = DecodeBudget::new(1 << 20, needed - 1);
        let err = decode_within(&frame, &small, Duration::ZERO).unwrap_err();
        assert!(matches!(err, ImageError::OverBudget { needed: 30000, .. }), "{err}");

        let held = budget.reserve((1, 1), needed, Duration::ZERO).unwrap();
        let err = decode_within(&frame, &budget, Duration::from_millis(20)).unwrap_err();
        assert_eq!(err, ImageError::Busy);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| decode_within(&frame, &budget, Duration::from_secs(10)).map(|i| i.0.dimensions()));
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
            assert_eq!(waiting.join().unwrap(), Ok((100, 100)));
        });
        assert_eq!(*budget.free.lock().unwrap(), needed, "every reservation is given back");
    }

    #[test]
    fn shapes_that_are_not_images_are_refused() {
        let d = decl(ResizeMode::Stretch, ColorOrder::Rgb, Layout::Nchw);
        assert!(ImageTarget::new(&d, &[1, 4, 4]).is_none());
        assert!(ImageTarget::new(&d, &[1, 1, 4, 4]).is_none());
        assert!(ImageTarget::new(&d, &[2, 3, 4, 4]).is_none());
    }
}
