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

use super::manifest::{ColorOrder, ImageDecl, Layout, ResizeMode};

/// Largest image side accepted, whatever the pixel count.
const MAX_SIDE: u32 = 8192;
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
    pub height: usize,
    pub width: usize,
}

impl ImageTarget {
    /// `shape` is the model input's declared shape: [N, 3, H, W] (NCHW) or [N, H, W, 3] (NHWC),
    /// N being 1 or the batch dimension. `None` when it is not such a shape.
    pub fn new(decl: &ImageDecl, shape: &[i64]) -> Option<ImageTarget> {
        let [n, a, b, c] = shape else {
            return None;
        };
        let (channels, height, width) = match decl.layout {
            Layout::Nchw => (*a, *b, *c),
            Layout::Nhwc => (*c, *a, *b),
        };
        if !(*n == 1 || *n == -1) || channels != 3 || height < 1 || width < 1 {
            return None;
        }
        Some(ImageTarget { decl: decl.clone(), height: height as usize, width: width as usize })
    }

    /// Decodes, resizes and scales one image into a [1, ...] tensor of the model's input shape.
    pub fn tensor(&self, bytes: &[u8]) -> Result<Tensor, ImageError> {
        // The decoded frame counts against the decode budget until it is resized away.
        let (rgb, reservation) = decode(bytes)?;
        let (w, h) = (rgb.width(), rgb.height());
        let (new_w, new_h) = self.resized_size(w as usize, h as usize);
        let resized = if (new_w, new_h) == (w as usize, h as usize) {
            rgb.into_raw()
        } else {
            resize(rgb.as_raw(), w, h, new_w as u32, new_h as u32)
        };
        let tensor = self.fill(&resized, new_w, new_h);
        drop((resized, reservation));
        Ok(tensor)
    }

    /// The size the image is resized to before padding.
    fn resized_size(&self, w: usize, h: usize) -> (usize, usize) {
        let (tw, th) = (self.width, self.height);
        match self.decl.resize {
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
        }
    }

    /// Scales RGB pixels into a padded tensor of the model's layout and channel order.
    fn fill(&self, rgb: &[u8], w: usize, h: usize) -> Tensor {
        let d = &self.decl;
        let (th, tw) = (self.height, self.width);
        let order = match d.color {
            ColorOrder::Rgb => [0, 1, 2],
            ColorOrder::Bgr => [2, 1, 0],
        };
        // Per RGB channel: value = pixel * scale' + offset, folding scale, mean and std together.
        let gain: [f32; 3] = std::array::from_fn(|c| d.scale / d.std[c]);
        let offset: [f32; 3] = std::array::from_fn(|c| -d.mean[c] / d.std[c]);
        let mut data = vec![d.pad_value; 3 * th * tw];
        for y in 0..h {
            for x in 0..w {
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
            let (width, height) =
                ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().unwrap_or((u32::MAX, u32::MAX));
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

/// Bilinear (triangle-filter convolution, as Pillow's BILINEAR) resize of packed RGB pixels.
fn resize(rgb: &[u8], w: u32, h: u32, new_w: u32, new_h: u32) -> Vec<u8> {
    let src = ImageRef::new(w, h, rgb, PixelType::U8x3).expect("buffer is w*h*3 bytes");
    let mut dst = Image::new(new_w, new_h, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
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
            scale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
            pad_value: -7.0,
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
        let t = target.tensor(&png(2, 1, [255, 0, 51])).unwrap();
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
        let t = target.tensor(&png(7, 2, [0, 255, 0])).unwrap();
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
