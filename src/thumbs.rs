//! Thumbnails: an uploaded image, decoded under limits and reduced to fit [`MAX_W`]×[`MAX_H`]
//! as a PNG.
//!
//! The input is whatever a client uploaded, so decoding is the risky part. The format is
//! guessed from the content (never from the name or the declared type, which only decide
//! whether to try, see [`is_thumbnailable`]); the declared dimensions and the size of the
//! decoded pixels are checked against [`ThumbLimits`] before any pixel buffer is allocated, so a
//! small file that declares a huge image (a decompression bomb) is refused at once; and a panic
//! inside a decoder is caught and reported as a corrupt image rather than taking a worker down.
//!
//! EXIF orientation (JPEG, WebP, TIFF) is applied, so phone photos come out upright. The output
//! is 8 bits per channel, grey or colour, with alpha only when the source has it.

use std::io::{BufRead, Seek};
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

/// The largest thumbnail width. Smaller images are never enlarged.
pub const MAX_W: u32 = 600;
/// The largest thumbnail height. Smaller images are never enlarged.
pub const MAX_H: u32 = 400;

/// The resampling filter. On a 4000×3000 photo (optimised build) `Triangle` takes about a
/// third of the time of `CatmullRom` and a fifth of `Lanczos3`, and at reduction ratios of 5
/// and more its result is indistinguishable from theirs at thumbnail size; `Nearest` aliases
/// visibly. Decoding dominates the total either way.
const FILTER: FilterType = FilterType::Triangle;

/// Bounds on what is decoded, so that one hostile upload cannot exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbLimits {
    /// The widest image decoded, in pixels.
    pub max_width: u32,
    /// The tallest image decoded, in pixels.
    pub max_height: u32,
    /// The most bytes the decoded pixels (and each decoder's own buffers) may take.
    pub max_alloc: u64,
}

impl Default for ThumbLimits {
    /// 16384 pixels a side and 256 MiB of pixels: any camera photo (a 100-megapixel RGB image
    /// is 300 MB... so up to about 85 megapixels in RGB, 64 in RGBA), yet a bound a server with
    /// a few concurrent preview jobs can afford.
    fn default() -> Self {
        ThumbLimits {
            max_width: 16384,
            max_height: 16384,
            max_alloc: 256 * 1024 * 1024,
        }
    }
}

/// A PNG thumbnail and its size in pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Why no thumbnail could be made. Each variant reads as a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThumbError {
    /// Not an image, or a format (or a variant of one) chunkd does not decode.
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    /// Larger than [`ThumbLimits`] allows: a huge image or a decompression bomb.
    #[error("the image is too large to preview: {0}")]
    TooLarge(String),
    /// A recognised format with broken or truncated data.
    #[error("the image is corrupt: {0}")]
    Corrupt(String),
    /// The thumbnail could not be encoded as PNG (a bug: the input to the encoder is ours).
    #[error("the thumbnail could not be encoded: {0}")]
    Encode(String),
}

impl From<ImageError> for ThumbError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Limits(l) => ThumbError::TooLarge(l.to_string()),
            ImageError::Unsupported(u) => ThumbError::Unsupported(u.to_string()),
            ImageError::Encoding(x) => ThumbError::Encode(x.to_string()),
            other => ThumbError::Corrupt(other.to_string()),
        }
    }
}

/// Whether a file looks like an image chunkd can preview, by its MIME type or its name's
/// extension (either suffices: clients often send `application/octet-stream`). Only a hint:
/// [`make_thumbnail`] decides by the content.
pub fn is_thumbnailable(mime: &str, name: &str) -> bool {
    let mime = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let by_mime = matches!(
        mime.as_str(),
        "image/png"
            | "image/apng"
            | "image/jpeg"
            | "image/jpg"
            | "image/pjpeg"
            | "image/gif"
            | "image/webp"
            | "image/bmp"
            | "image/x-bmp"
            | "image/x-ms-bmp"
            | "image/tiff"
            | "image/tiff-fx"
    );
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let by_ext = base.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && matches!(
                ext.to_ascii_lowercase().as_str(),
                "png"
                    | "apng"
                    | "jpg"
                    | "jpeg"
                    | "jpe"
                    | "jfif"
                    | "gif"
                    | "webp"
                    | "bmp"
                    | "dib"
                    | "tif"
                    | "tiff"
            )
    });
    by_mime || by_ext
}

/// The size of the thumbnail of a `width`×`height` image: the largest that fits within
/// [`MAX_W`]×[`MAX_H`] with the same aspect ratio (rounded, at least 1×1), never larger than
/// the image itself.
pub fn fit(width: u32, height: u32) -> (u32, u32) {
    if width <= MAX_W && height <= MAX_H {
        return (width, height);
    }
    let (w, h) = (u64::from(width), u64::from(height));
    let (mw, mh) = (u64::from(MAX_W), u64::from(MAX_H));
    // Compare the ratios w/h and MAX_W/MAX_H without division.
    let (tw, th) = if w * mh >= h * mw {
        (mw, (h * mw + w / 2) / w)
    } else {
        ((w * mh + h / 2) / h, mh)
    };
    (tw.max(1) as u32, th.max(1) as u32)
}

/// Decodes an image (format guessed from its first bytes) within `limits`, and returns its
/// thumbnail as a PNG.
pub fn make_thumbnail(
    reader: impl BufRead + Seek,
    limits: ThumbLimits,
) -> Result<Thumbnail, ThumbError> {
    catch_unwind(AssertUnwindSafe(|| thumbnail_of(reader, limits))).unwrap_or_else(|_| {
        Err(ThumbError::Corrupt(
            "the decoder failed on this input".into(),
        ))
    })
}

fn thumbnail_of(reader: impl BufRead + Seek, limits: ThumbLimits) -> Result<Thumbnail, ThumbError> {
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(limits.max_width);
    lim.max_image_height = Some(limits.max_height);
    lim.max_alloc = Some(limits.max_alloc);

    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| ThumbError::Corrupt(e.to_string()))?;
    match reader.format() {
        None => {
            return Err(ThumbError::Unsupported(
                "the content is not a PNG, JPEG, GIF, WebP, BMP or TIFF image".into(),
            ));
        }
        Some(
            ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::Gif
            | ImageFormat::WebP
            | ImageFormat::Bmp
            | ImageFormat::Tiff,
        ) => {}
        Some(f) => {
            return Err(ThumbError::Unsupported(format!(
                "{f:?} images are not previewed"
            )));
        }
    }
    reader.limits(lim.clone());
    // `ImageReader::decode` would do this, but it drops the orientation: the same steps by hand.
    let mut decoder = reader.into_decoder()?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ThumbError::Corrupt("the image has no pixels".into()));
    }
    // The decoded pixels count against the budget before they are allocated.
    lim.reserve(decoder.total_bytes())?;
    decoder.set_limits(lim)?;
    let image = DynamicImage::from_decoder(decoder)?;

    // Rotations by a quarter turn swap the axes: fit the upright size, then resize the stored
    // pixels to the matching (swapped) size, and turn the small result.
    let swaps = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (tw, th) = if swaps {
        let (w, h) = fit(height, width);
        (h, w)
    } else {
        fit(width, height)
    };
    let mut small = if (tw, th) == (width, height) {
        image
    } else {
        image.resize_exact(tw, th, FILTER)
    };
    small.apply_orientation(orientation);

    let small = match small.color() {
        ColorType::L8 | ColorType::L16 => DynamicImage::ImageLuma8(small.to_luma8()),
        ColorType::La8 | ColorType::La16 => DynamicImage::ImageLumaA8(small.to_luma_alpha8()),
        ColorType::Rgb8 | ColorType::Rgba8 => small,
        c if c.has_alpha() => DynamicImage::ImageRgba8(small.to_rgba8()),
        _ => DynamicImage::ImageRgb8(small.to_rgb8()),
    };
    let mut png = Vec::new();
    small.write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)?;
    Ok(Thumbnail {
        png,
        width: small.width(),
        height: small.height(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
    use std::io::Cursor;

    fn gradient(w: u32, h: u32) -> RgbImage {
        ImageBuffer::from_fn(w, h, |x, y| {
            Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 128])
        })
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).unwrap();
        out
    }

    fn thumb(bytes: &[u8]) -> Result<Thumbnail, ThumbError> {
        make_thumbnail(Cursor::new(bytes), ThumbLimits::default())
    }

    /// Decodes a thumbnail's PNG and checks it matches the reported size.
    fn decoded(t: &Thumbnail) -> DynamicImage {
        let img = image::load_from_memory_with_format(&t.png, ImageFormat::Png).unwrap();
        assert_eq!((img.width(), img.height()), (t.width, t.height));
        img
    }

    fn png_of(w: u32, h: u32) -> Vec<u8> {
        encode(&DynamicImage::ImageRgb8(gradient(w, h)), ImageFormat::Png)
    }

    #[test]
    fn fit_keeps_the_aspect_ratio_and_never_enlarges() {
        assert_eq!(fit(1200, 800), (600, 400));
        assert_eq!(fit(300, 200), (300, 200));
        assert_eq!(fit(400, 2000), (80, 400));
        assert_eq!(fit(4000, 3000), (533, 400));
        assert_eq!(fit(6000, 1000), (600, 100));
        assert_eq!(fit(600, 400), (600, 400));
        assert_eq!(fit(601, 400), (600, 399));
        assert_eq!(fit(100_000, 1), (600, 1));
        assert_eq!(fit(1, 100_000), (1, 400));
        assert_eq!(fit(u32::MAX, u32::MAX), (400, 400));
        assert_eq!(fit(1, 1), (1, 1));
    }

    #[test]
    fn large_png_is_reduced() {
        let t = thumb(&png_of(1200, 800)).unwrap();
        assert_eq!((t.width, t.height), (600, 400));
        let img = decoded(&t);
        assert_eq!(img.color(), ColorType::Rgb8);
        // The gradient survives: left is dark red, right is bright red.
        let left = img.to_rgb8().get_pixel(2, 200).0[0];
        let right = img.to_rgb8().get_pixel(597, 200).0[0];
        assert!(left < 10 && right > 245, "{left} {right}");
    }

    #[test]
    fn small_image_keeps_its_size() {
        let t = thumb(&png_of(300, 200)).unwrap();
        assert_eq!((t.width, t.height), (300, 200));
        assert_eq!(
            decoded(&t).to_rgb8(),
            gradient(300, 200),
            "pixels untouched"
        );
    }

    #[test]
    fn tall_image_fits_the_height() {
        let t = thumb(&png_of(400, 2000)).unwrap();
        assert_eq!((t.width, t.height), (80, 400));
        decoded(&t);
    }

    #[test]
    fn every_format_round_trips() {
        let rgb = DynamicImage::ImageRgb8(gradient(900, 300));
        let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_fn(900, 300, |x, y| {
            Rgba([x as u8, y as u8, 7, (x % 256) as u8])
        }));
        for (img, format, want_alpha) in [
            (&rgb, ImageFormat::Jpeg, false),
            (&rgb, ImageFormat::Gif, true),
            (&rgba, ImageFormat::Gif, true),
            (&rgb, ImageFormat::WebP, false),
            (&rgba, ImageFormat::WebP, true),
            (&rgb, ImageFormat::Bmp, false),
            (&rgba, ImageFormat::Bmp, true),
            (&rgb, ImageFormat::Tiff, false),
            (&rgba, ImageFormat::Tiff, true),
            (&rgba, ImageFormat::Png, true),
        ] {
            let bytes = encode(img, format);
            let t = thumb(&bytes).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((t.width, t.height), (600, 200), "{format:?}");
            let out = decoded(&t);
            assert_eq!(out.color().has_alpha(), want_alpha, "{format:?}");
            assert!(out.color().bytes_per_pixel() <= 4, "8-bit output");
        }
    }

    #[test]
    fn grey_and_sixteen_bit_become_eight_bit() {
        let grey = DynamicImage::ImageLuma8(ImageBuffer::from_fn(800, 800, |x, _| {
            image::Luma([x as u8])
        }));
        let t = thumb(&encode(&grey, ImageFormat::Png)).unwrap();
        assert_eq!((t.width, t.height), (400, 400));
        assert_eq!(decoded(&t).color(), ColorType::L8);

        let deep = DynamicImage::ImageRgba16(ImageBuffer::from_fn(700, 100, |x, y| {
            Rgba([x as u16 * 90, y as u16 * 600, 0, 65535])
        }));
        let t = thumb(&encode(&deep, ImageFormat::Png)).unwrap();
        assert_eq!((t.width, t.height), (600, 86));
        assert_eq!(decoded(&t).color(), ColorType::Rgba8);
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A minimal big-endian EXIF (TIFF) block: one IFD entry, Orientation (0x0112) = 6,
        // "rotate 90° clockwise to display".
        let exif: Vec<u8> = [
            &b"MM\0\x2a"[..],
            &8u32.to_be_bytes(),
            &1u16.to_be_bytes(),
            &0x0112u16.to_be_bytes(),
            &3u16.to_be_bytes(),
            &1u32.to_be_bytes(),
            &6u16.to_be_bytes(),
            &[0, 0],
            &0u32.to_be_bytes(),
        ]
        .concat();
        // Stored 1200 wide by 300 high; displayed 300 wide by 1200 high.
        let img = gradient(1200, 300);
        let mut bytes = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90);
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(img.as_raw(), 1200, 300, image::ExtendedColorType::Rgb8)
            .unwrap();
        let t = thumb(&bytes).unwrap();
        assert_eq!((t.width, t.height), (100, 400));
        // The stored left edge (dark red) is now the top.
        let out = decoded(&t).to_rgb8();
        let top = out.get_pixel(50, 2).0[0];
        let bottom = out.get_pixel(50, 397).0[0];
        assert!(top < 20 && bottom > 235, "{top} {bottom}");
    }

    #[test]
    fn truncated_png_is_an_error() {
        let bytes = png_of(1200, 800);
        for cut in [8, 33, 60, bytes.len() / 2, bytes.len() - 13] {
            let e = thumb(&bytes[..cut]).unwrap_err();
            assert!(matches!(e, ThumbError::Corrupt(_)), "cut at {cut}: {e:?}");
        }
        let e = thumb(&bytes[..4]).unwrap_err();
        assert!(matches!(e, ThumbError::Unsupported(_)), "{e:?}");
    }

    #[test]
    fn corrupt_data_in_every_format_is_an_error_not_a_panic() {
        let rgb = DynamicImage::ImageRgb8(gradient(300, 200));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ] {
            let good = encode(&rgb, format);
            for cut in [good.len() / 4, good.len() / 2] {
                let _ = thumb(&good[..cut]);
            }
            // Flip bytes after the signature.
            let mut bad = good.clone();
            for i in (16..bad.len()).step_by(37) {
                bad[i] ^= 0x5a;
            }
            let _ = thumb(&bad);
        }
    }

    /// Sets the width and height of a PNG's IHDR and fixes its CRC.
    fn patch_ihdr(png: &mut [u8], width: u32, height: u32) {
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn decompression_bombs_are_refused_at_once() {
        let start = std::time::Instant::now();
        // Declared far beyond the side limit.
        let mut bomb = png_of(1, 1);
        patch_ihdr(&mut bomb, 100_000, 100_000);
        let e = thumb(&bomb).unwrap_err();
        assert!(matches!(e, ThumbError::TooLarge(_)), "{e:?}");
        // Within the side limit, but 16000×16000 RGB is 768 MB of pixels.
        let mut bomb = png_of(1, 1);
        patch_ihdr(&mut bomb, 16_000, 16_000);
        let e = thumb(&bomb).unwrap_err();
        assert!(matches!(e, ThumbError::TooLarge(_)), "{e:?}");
        assert!(e.to_string().starts_with("the image is too large"));
        // A real, highly compressible image over a tight budget.
        let real = png_of(2000, 2000);
        let tight = ThumbLimits {
            max_alloc: 1024 * 1024,
            ..ThumbLimits::default()
        };
        let e = make_thumbnail(Cursor::new(&real), tight).unwrap_err();
        assert!(matches!(e, ThumbError::TooLarge(_)), "{e:?}");
        let narrow = ThumbLimits {
            max_width: 1999,
            ..ThumbLimits::default()
        };
        let e = make_thumbnail(Cursor::new(&real), narrow).unwrap_err();
        assert!(matches!(e, ThumbError::TooLarge(_)), "{e:?}");
        assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
    }

    #[test]
    fn bombs_in_other_formats_are_refused() {
        // A BMP header declaring 15000×15000 at 24 bits (675 MB) and no pixel data.
        let mut bmp = encode(&DynamicImage::ImageRgb8(gradient(1, 1)), ImageFormat::Bmp);
        bmp[18..22].copy_from_slice(&15_000i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&15_000i32.to_le_bytes());
        assert!(thumb(&bmp).is_err());
        // A GIF declaring 65535×65535.
        let mut gif = encode(&DynamicImage::ImageRgb8(gradient(1, 1)), ImageFormat::Gif);
        gif[6..8].copy_from_slice(&65535u16.to_le_bytes());
        gif[8..10].copy_from_slice(&65535u16.to_le_bytes());
        assert!(thumb(&gif).is_err());
    }

    #[test]
    fn random_bytes_and_other_formats_are_unsupported() {
        let mut noise = vec![0u8; 4096];
        crate::crypto::random_bytes(&mut noise);
        noise[0] = b'x'; // Not a magic number by chance.
        assert!(matches!(thumb(&noise), Err(ThumbError::Unsupported(_))));
        assert!(matches!(thumb(b""), Err(ThumbError::Unsupported(_))));
        assert!(matches!(
            thumb(b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
            Err(ThumbError::Unsupported(_))
        ));
        // A recognised magic number followed by noise.
        let mut fake = b"\x89PNG\r\n\x1a\n".to_vec();
        fake.extend_from_slice(&noise);
        assert!(matches!(thumb(&fake), Err(ThumbError::Corrupt(_))));
        let mut fake = b"\xff\xd8\xff".to_vec();
        fake.extend_from_slice(&noise);
        assert!(thumb(&fake).is_err());
    }

    #[test]
    fn thumbnailable_by_mime_or_extension() {
        for (mime, name) in [
            ("image/png", "x"),
            ("IMAGE/JPEG; charset=binary", "x"),
            ("image/webp", ""),
            ("application/octet-stream", "photo.JPG"),
            ("", "a/b/scan.tiff"),
            ("", "anim.gif"),
            ("", "icon.bmp"),
            ("", "p.webp"),
            ("", "x.jpeg"),
        ] {
            assert!(is_thumbnailable(mime, name), "{mime} {name}");
        }
        for (mime, name) in [
            ("application/pdf", "doc.pdf"),
            ("image/svg+xml", "logo.svg"),
            ("", "png"),
            ("", ".png"),
            ("", "png.txt"),
            ("text/plain", "notes"),
            ("image/heic", "IMG_1.heic"),
        ] {
            assert!(!is_thumbnailable(mime, name), "{mime} {name}");
        }
    }

    #[test]
    fn error_sentences() {
        let e = ThumbError::TooLarge("x".into()).to_string();
        assert!(e.starts_with("the image is too large"));
        let _ = RgbaImage::new(1, 1);
    }

    /// `cargo test --release --lib thumbs::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn speed() {
        let img = DynamicImage::ImageRgb8(gradient(4000, 3000));
        let (tw, th) = fit(4000, 3000);
        for filter in [
            FilterType::Nearest,
            FilterType::Triangle,
            FilterType::CatmullRom,
            FilterType::Gaussian,
            FilterType::Lanczos3,
        ] {
            let t = std::time::Instant::now();
            let _ = img.resize_exact(tw, th, filter);
            println!("{filter:?}: {:?}", t.elapsed());
        }
        let t = std::time::Instant::now();
        let _ = img.thumbnail_exact(tw, th);
        println!("thumbnail (area average): {:?}", t.elapsed());
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let t = std::time::Instant::now();
        let _ = thumb(&jpeg).unwrap();
        println!("whole JPEG thumbnail: {:?}", t.elapsed());
        let png = encode(&img, ImageFormat::Png);
        let t = std::time::Instant::now();
        let _ = thumb(&png).unwrap();
        println!("whole PNG thumbnail: {:?}", t.elapsed());
    }
}
