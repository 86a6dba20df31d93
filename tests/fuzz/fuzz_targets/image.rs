//! Image requests: `ImageTarget::tensor` (PNG/JPEG decode under the daemon's limits, resize,
//! scale, lay out) for the four resize modes (`limit_side`: the frame decides the size), both
//! layouts, channel orders and filters, and target sizes up to 512 pixels a side.
//!
//! Input layout: byte 0 chooses the declaration, bytes 1-2 the target height and width (1-256,
//! doubled when bit 3 of byte 0 is set; for `limit_side`, the limit and the multiple), the rest
//! is the image file.
#![no_main]

use edgeinfer::model::image::ImageTarget;
use edgeinfer::model::manifest::{ColorOrder, ImageDecl, Interpolation, Layout, LimitType, ResizeMode};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&[config, h, w], image)) = data.split_first_chunk::<3>() else {
        return;
    };
    let resize = match config % 4 {
        0 => ResizeMode::Stretch,
        1 => ResizeMode::FitHeight,
        2 => ResizeMode::Letterbox,
        _ => ResizeMode::LimitSide,
    };
    let any_size = resize == ResizeMode::LimitSide;
    let color = if config & 4 == 0 { ColorOrder::Rgb } else { ColorOrder::Bgr };
    let layout = if config & 16 == 0 { Layout::Nchw } else { Layout::Nhwc };
    let scale = if config & 8 == 0 { 1 } else { 2 };
    let (height, width) = ((i64::from(h) + 1) * scale, (i64::from(w) + 1) * scale);
    let decl = ImageDecl {
        input: "x".into(),
        resize,
        color,
        layout,
        interpolation: if config & 32 == 0 { Interpolation::Bilinear } else { Interpolation::Nearest },
        scale: 1.0 / 255.0,
        mean: [0.5, 0.4, 0.3],
        std: [0.5, 0.25, 0.2],
        pad_value: -1.0,
        limit_type: if config & 64 == 0 { LimitType::Min } else { LimitType::Max },
        limit_side_len: 32 + u32::from(h) * 2,
        size_multiple: 1 + u32::from(w) % 64,
    };
    let (height, width) = if any_size { (-1, -1) } else { (height, width) };
    let shape = match layout {
        Layout::Nchw => [1, 3, height, width],
        Layout::Nhwc => [-1, height, width, 3],
    };
    let target = ImageTarget::new(&decl, &shape).expect("an image shape");
    if let Ok((tensor, geometry)) = target.tensor(image) {
        let dims = match layout {
            Layout::Nchw => [tensor.shape()[0], tensor.shape()[1], tensor.shape()[2], tensor.shape()[3]],
            Layout::Nhwc => [tensor.shape()[0], tensor.shape()[3], tensor.shape()[1], tensor.shape()[2]],
        };
        assert_eq!(&dims[..2], &[1, 3]);
        if any_size {
            let multiple = decl.size_multiple as usize;
            assert!(dims[2] % multiple == 0 && dims[3] % multiple == 0 && dims[2] >= multiple, "{dims:?}");
        } else {
            assert_eq!(&dims[2..], &[height as usize, width as usize]);
        }
        assert!(geometry.scale_x > 0.0 && geometry.scale_y > 0.0 && geometry.scale_x.is_finite(), "{geometry:?}");
    }
});
