//! Image requests: `ImageTarget::tensor` (PNG/JPEG decode under the daemon's limits, resize,
//! scale, lay out) for the three resize modes, both layouts and channel orders, and target sizes
//! up to 512 pixels a side.
//!
//! Input layout: byte 0 chooses the declaration, bytes 1-2 the target height and width (1-256,
//! doubled when bit 3 of byte 0 is set), the rest is the image file.
#![no_main]

use edgeinfer::model::image::ImageTarget;
use edgeinfer::model::manifest::{ColorOrder, ImageDecl, Layout, ResizeMode};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&[config, h, w], image)) = data.split_first_chunk::<3>() else {
        return;
    };
    let resize = match config % 3 {
        0 => ResizeMode::Stretch,
        1 => ResizeMode::FitHeight,
        _ => ResizeMode::Letterbox,
    };
    let color = if config & 4 == 0 { ColorOrder::Rgb } else { ColorOrder::Bgr };
    let layout = if config & 16 == 0 { Layout::Nchw } else { Layout::Nhwc };
    let scale = if config & 8 == 0 { 1 } else { 2 };
    let (height, width) = ((i64::from(h) + 1) * scale, (i64::from(w) + 1) * scale);
    let decl = ImageDecl {
        input: "x".into(),
        resize,
        color,
        layout,
        scale: 1.0 / 255.0,
        mean: [0.5, 0.4, 0.3],
        std: [0.5, 0.25, 0.2],
        pad_value: -1.0,
    };
    let shape = match layout {
        Layout::Nchw => [1, 3, height, width],
        Layout::Nhwc => [-1, height, width, 3],
    };
    let target = ImageTarget::new(&decl, &shape).expect("an image shape");
    if let Ok(tensor) = target.tensor(image) {
        let (height, width) = (height as usize, width as usize);
        let want = match layout {
            Layout::Nchw => [1, 3, height, width],
            Layout::Nhwc => [1, height, width, 3],
        };
        assert_eq!(tensor.shape(), &want);
    }
});
