//! `bench/report.png`: the throughput figures as bars on a log scale (the
//! raw limits can be a hundred times the pipeline), with the target drawn
//! across. Text is drawn with the font in `assets/`, so the chart needs
//! nothing installed on the machine.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// DejaVu Sans (free licence, `assets/DejaVuSans.LICENSE`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One bar: its label, its value (events or rows per second), whether it
/// is a raw limit (drawn grey) rather than the pipeline.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub raw_limit: bool,
}

/// One panel: a title, its bars and the target line, if any.
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
    pub target: Option<f64>,
}

/// Draws the panels side by side into `path`.
pub fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| anyhow!("the bundled font is invalid"))?;
    let width = 640 * u32::try_from(panels.len().max(1))?;
    let root = BitMapBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present()
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("writing {}", path.display()))
}

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, panel: &Panel) -> Result<()> {
    let highest = panel
        .bars
        .iter()
        .map(|b| b.value)
        .chain(panel.target)
        .fold(1.0_f64, f64::max);
    let lowest = panel
        .bars
        .iter()
        .map(|b| b.value)
        .filter(|v| *v > 0.0)
        .chain(panel.target)
        .fold(highest, f64::min);
    let floor = 10f64.powf((lowest / 2.0).max(1.0).log10().floor());
    let ceiling = highest * 3.0;
    let count = panel.bars.len();
    let labels: Vec<String> = panel.bars.iter().map(|b| b.label.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(count as f64 - 0.5), (floor..ceiling).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(count.max(1))
        .x_label_formatter(&|x| {
            let index = x.round();
            if (x - index).abs() > 0.01 || index < 0.0 {
                return String::new();
            }
            labels.get(index as usize).cloned().unwrap_or_default()
        })
        .y_desc("per second (log scale)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let pipeline = RGBColor(31, 119, 180);
    let limit = RGBColor(160, 160, 160);
    chart
        .draw_series(panel.bars.iter().enumerate().map(|(i, bar)| {
            let x = i as f64;
            let colour = if bar.raw_limit { limit } else { pipeline };
            Rectangle::new([(x - 0.35, floor), (x + 0.35, bar.value.max(floor))], colour.filled())
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(panel.bars.iter().enumerate().map(|(i, bar)| {
            Text::new(
                format!("{:.0}", bar.value),
                (i as f64 - 0.3, bar.value.max(floor) * 1.15),
                ("sans-serif", 14),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    if let Some(target) = panel.target {
        let red = RGBColor(214, 39, 40);
        chart
            .draw_series(LineSeries::new(
                [(-0.5, target), (count as f64 - 0.5, target)],
                red.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("target {target:.0}/s"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}
