//! PNG plots of a report with `plotters`: training-loss curves, accuracy against the rank and
//! against the fit fraction, and how far LoRA's projector moved from its initialisation.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::table::{Variant, VariantKey};
use crate::{Error, Result};

const SIZE: (u32, u32) = (900, 560);

/// Fonts tried, in order, when none is given.
const FONT_CANDIDATES: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers the TrueType font the plots' text is drawn with: `path`, or the first of a few
/// usual system fonts.
pub fn use_font(path: Option<&Path>) -> Result<()> {
    let candidates: Vec<PathBuf> = match path {
        Some(p) => vec![p.to_path_buf()],
        None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    let Some(found) = candidates.iter().find(|p| p.is_file()) else {
        return Err(Error::Config(match path {
            Some(p) => format!("--font {}: no such file", p.display()),
            None => "no TrueType font found for the plots' text: pass --font FILE.ttf (on \
                     Debian: apt install fonts-dejavu-core), or --no-plots"
                .into(),
        }));
    };
    let bytes = std::fs::read(found).map_err(|e| Error::file(found, e))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| Error::file(found, "not a TrueType font plotters can read"))
}

/// Draws with `draw` on a white canvas and writes it as a PNG at `path`.
fn render(
    path: &Path,
    draw: impl FnOnce(
        &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    ) -> std::result::Result<(), String>,
) -> Result<()> {
    let (w, h) = SIZE;
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| Error::file(path, e))?;
        draw(&root).map_err(|e| Error::file(path, e))?;
        root.present().map_err(|e| Error::file(path, e))?;
    }
    let image = image::RgbImage::from_raw(w, h, buffer)
        .ok_or_else(|| Error::State("plot buffer of the wrong size".into()))?;
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::file(path, e))?;
    crate::adapter::write_atomic(path, &bytes)
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}

/// How many loss curves one plot shows at most.
const MAX_LOSS_CURVES: usize = 12;

/// The mean training loss per step of every variant that trained (past
/// [`MAX_LOSS_CURVES`], of those with the most runs).
pub fn loss_curves(variants: &[Variant], path: &Path) -> Result<bool> {
    let mut trained: Vec<&Variant> = variants.iter().filter(|v| !v.losses.is_empty()).collect();
    if trained.is_empty() {
        return Ok(false);
    }
    // A whole grid's curves are a tangle: past a dozen, the variants with the most seeds (the
    // main comparison; the sweeps are in the other plots).
    let mut caption = "Training loss (mean over seeds)".to_string();
    if trained.len() > MAX_LOSS_CURVES {
        let most = trained.iter().map(|v| v.dirs.len()).max().unwrap_or(1);
        trained.retain(|v| v.dirs.len() == most);
        trained.truncate(MAX_LOSS_CURVES);
        caption = format!("Training loss (mean over seeds; the variants with {most} runs)");
    }
    let steps = trained
        .iter()
        .flat_map(|v| v.losses.iter().map(|(s, _)| *s as f64))
        .fold(1.0, f64::max);
    let (lo, hi) = range(
        trained
            .iter()
            .flat_map(|v| v.losses.iter().map(|(_, l)| *l)),
    );
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption.as_str(), ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..steps, lo..hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc("loss")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, v) in trained.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    v.losses.iter().map(|(s, l)| (*s as f64, *l)),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(v.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })?;
    Ok(true)
}

/// Average accuracy (mean ± std over seeds) against `x` of the variants, one line per
/// `series`; written only when some line has two points or more.
pub fn accuracy_against(
    variants: &[Variant],
    x: impl Fn(&VariantKey) -> Option<f64>,
    series: impl Fn(&VariantKey) -> String,
    title: &str,
    x_desc: &str,
    path: &Path,
) -> Result<bool> {
    let mut lines: Vec<(String, Vec<(f64, f64, f64)>)> = Vec::new();
    for v in variants {
        let (Some(x), Some((m, s, _))) = (x(&v.key), v.accuracy.get("average")) else {
            continue;
        };
        let name = series(&v.key);
        match lines.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push((x, *m, *s)),
            None => lines.push((name, vec![(x, *m, *s)])),
        }
    }
    lines.retain(|(_, p)| p.len() >= 2);
    if lines.is_empty() {
        return Ok(false);
    }
    for (_, points) in &mut lines {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let (x0, x1) = range(lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    let (y0, y1) = range(
        lines
            .iter()
            .flat_map(|(_, p)| p.iter().flat_map(|q| [q.1 - q.2, q.1 + q.2])),
    );
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("average accuracy (%)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(points.iter().map(|p| {
                    ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, color.filled(), 8)
                }))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })?;
    Ok(true)
}

/// Per adapted layer, cos(P, P₀) of the variants whose projector trained: how little the
/// down-projection moves from where it started (the paper's §3.2).
pub fn projector_cosine_bars(variants: &[Variant], path: &Path) -> Result<bool> {
    let shown: Vec<&Variant> = variants
        .iter()
        .filter(|v| v.key.projector_trained == Some(true) && !v.projector_cosine.is_empty())
        .collect();
    if shown.is_empty() {
        return Ok(false);
    }
    let layers = shown
        .iter()
        .map(|v| v.projector_cosine.len())
        .max()
        .unwrap_or(0);
    let width = 1.0 / (shown.len() as f64 + 1.0);
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Projector after training vs. its initialisation, per layer",
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..layers as f64, 0.0..1.05)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("adapted layer (in module order)")
            .y_desc("cos(P, P₀)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, v) in shown.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(v.projector_cosine.iter().enumerate().map(|(j, (_, c))| {
                    let left = j as f64 + width * (i as f64 + 0.5);
                    Rectangle::new([(left, 0.0), (left + width, *c)], color.filled())
                }))
                .map_err(|e| e.to_string())?
                .label(v.label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })?;
    Ok(true)
}
