//! Pictures of a world: tokens projected to 2D by PCA of their 8D positions,
//! coloured by level-1 group, with group centres marked (`neurograph plot`).

use crate::geometry::hierarchy::{Hierarchy, principal_axes};
use crate::model::components::{Position, TokenId};
use crate::model::math::Vec8;
use bevy_ecs::prelude::*;
use plotters::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The smallest and largest image side accepted, in pixels.
pub const SIDE_RANGE: std::ops::RangeInclusive<u32> = 16..=16_384;

/// Why a picture was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output file cannot be written (checked before drawing).
    #[error(transparent)]
    Output(#[from] crate::app::paths::OutputPathError),
    /// A side of the image is out of [`SIDE_RANGE`].
    #[error("image size {width}×{height}: each side must be in {}..={} pixels", SIDE_RANGE.start(), SIDE_RANGE.end())]
    Size {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
    },
    /// Drawing failed.
    #[error("drawing the picture: {0}")]
    Draw(String),
    /// Writing the PNG failed.
    #[error("{}: {reason}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Checks, before any work, that [`plot_world`] can write a `width` × `height`
/// PNG at `path`.
///
/// # Errors
/// [`PlotError::Size`] for a side out of [`SIDE_RANGE`], [`PlotError::Output`]
/// when the name does not end in `.png` or its directory cannot take the file.
pub fn check_output(path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
    if !SIDE_RANGE.contains(&width) || !SIDE_RANGE.contains(&height) {
        return Err(PlotError::Size { width, height });
    }
    crate::app::paths::check_output_file(path, &["png"])?;
    Ok(())
}

/// What was drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlotStats {
    /// Tokens drawn.
    pub tokens: usize,
    /// Tokens in a level-1 group.
    pub grouped: usize,
    /// Level-1 centres marked (crosses).
    pub level1: usize,
    /// Level-2 centres marked (rings).
    pub level2: usize,
}

/// Twenty colours that stay apart (Tableau 20, dark tones first, its two greys
/// swapped for navy and maroon: grey is for ungrouped tokens).
const PALETTE: [(u8, u8, u8); 20] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (0, 0, 128),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (128, 0, 0),
    (219, 219, 141),
    (158, 218, 229),
];

/// Draws the level-0 tokens of `world` into a PNG of `width` × `height` pixels at
/// `path`: PCA projection, one colour per level-1 group (ungrouped tokens light
/// grey), a black cross on every level-1 centre and a ring on every level-2
/// centre. No text is drawn (the build carries no font). The file is written
/// whole or not at all (a temporary file renamed into place).
///
/// # Errors
/// As [`check_output`], and [`PlotError::Write`] when the PNG cannot be written.
pub fn plot_world(
    world: &mut World,
    path: &Path,
    width: u32,
    height: u32,
) -> Result<PlotStats, PlotError> {
    check_output(path, width, height)?;
    let mut q = world.query::<(&TokenId, &Position)>();
    let mut tokens: Vec<(TokenId, Vec8)> = q.iter(world).map(|(id, x)| (*id, x.0)).collect();
    tokens.sort_unstable_by_key(|t| t.0);
    let hier = world
        .get_resource::<Hierarchy>()
        .cloned()
        .unwrap_or_default();
    let mut colour_of: HashMap<u64, usize> = HashMap::new();
    if let Some(level1) = hier.levels.first() {
        for (k, g) in level1.iter().enumerate() {
            for &m in &g.members {
                colour_of.insert(m, k);
            }
        }
    }
    let points: Vec<Vec8> = tokens.iter().map(|t| t.1).collect();
    let (mean, [a, b]) = principal_axes(&points);
    let project = |x: Vec8| ((x - mean).dot(a) as f64, (x - mean).dot(b) as f64);
    let xy: Vec<(f64, f64)> = points.iter().map(|&x| project(x)).collect();
    let centres = |level: usize| -> Vec<(f64, f64)> {
        hier.levels
            .get(level)
            .map(|l| l.iter().map(|g| project(g.centre)).collect())
            .unwrap_or_default()
    };
    let (c1, c2) = (centres(0), centres(1));
    let all = xy.iter().chain(&c1).chain(&c2);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (-1.0, 1.0, -1.0, 1.0);
    }
    let pad = |lo: f64, hi: f64| {
        let p = ((hi - lo) * 0.05).max(1e-3);
        (lo - p)..(hi + p)
    };
    let err = |e: &dyn std::fmt::Display| PlotError::Draw(e.to_string());
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(16)
        .build_cartesian_2d(pad(x0, x1), pad(y0, y1))
        .map_err(|e| err(&e))?;
    let grey = RGBColor(215, 215, 215);
    // Ungrouped first, so groups draw over them.
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| colour_of.contains_key(&tokens[i].0.0));
    chart
        .draw_series(order.iter().map(|&i| {
            let colour = match colour_of.get(&tokens[i].0.0) {
                Some(&k) => {
                    let (r, g, b) = PALETTE[k % PALETTE.len()];
                    RGBColor(r, g, b)
                }
                None => grey,
            };
            Circle::new(xy[i], 2, colour.filled())
        }))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(c1.iter().map(|&c| Cross::new(c, 5, BLACK.stroke_width(2))))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            c2.iter()
                .map(|&c| Circle::new(c, 14, BLACK.stroke_width(2))),
        )
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    drop(chart);
    drop(root);
    write_png(path, &pixels, width, height)?;
    Ok(PlotStats {
        tokens: tokens.len(),
        grouped: tokens
            .iter()
            .filter(|t| colour_of.contains_key(&t.0.0))
            .count(),
        level1: c1.len(),
        level2: c2.len(),
    })
}

/// Writes RGB `pixels` as a PNG at `path`, whole or not at all
/// ([`crate::app::paths::write_whole`]).
fn write_png(path: &Path, pixels: &[u8], width: u32, height: u32) -> Result<(), PlotError> {
    crate::app::paths::write_whole(path, |out| {
        let mut encoder = png::Encoder::new(out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut w = encoder.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(pixels).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
        Ok(Some(()))
    })
    .map(|_| ())
    .map_err(|reason| PlotError::Write {
        path: path.to_path_buf(),
        reason,
    })
}
