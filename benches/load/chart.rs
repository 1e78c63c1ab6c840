//! The PNG chart of step mode: publish-to-delivery latency (p50, p99, p99.9; log scale) against
//! offered deliveries per second, with the p99 bound. plotters' bitmap backend, text drawn with
//! ab_glyph from a TrueType font file read at run time (no C font libraries).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::fanout::FanoutReport;

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font(font: Option<&Path>) -> anyhow::Result<()> {
    let path =
        match font {
            Some(path) => path.to_path_buf(),
            None => FONTS.iter().map(Path::new).find(|p| p.exists()).map(Path::to_path_buf).context(
                "no TrueType font found for the chart's text (install fonts-dejavu-core or pass --font FILE)",
            )?,
        };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a usable TrueType font", path.display()))
}

pub fn draw(report: &FanoutReport, path: &Path, font: Option<&Path>) -> anyhow::Result<()> {
    register_font(font)?;
    let steps: Vec<_> = report.steps.iter().filter(|s| s.latency.count > 0).collect();
    anyhow::ensure!(!steps.is_empty(), "no step delivered anything: nothing to chart");
    let x_max = steps.iter().map(|s| s.offered_deliveries_per_s).fold(0.0, f64::max) * 1.1 / 1000.0;
    let y_min = steps.iter().map(|s| s.latency.p50_ms).fold(f64::INFINITY, f64::min).clamp(0.01, 1.0) / 2.0;
    let bound = report.p99_bound_ms.unwrap_or(50.0);
    let y_max = steps.iter().map(|s| s.latency.p999_ms).fold(bound, f64::max) * 2.0;

    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let a = &report.args;
    let title = format!(
        "edgerelay fanout over {:?}: {} subscribers / {} rooms, {} publishers, {} B",
        report.transport, a.subscribers, a.rooms, a.publishers, a.payload
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries per second (thousands)")
        .y_desc("publish to delivery latency (ms, log)")
        .draw()?;
    let series = [("p50", BLUE, 0usize), ("p99", RED, 1), ("p99.9", MAGENTA, 2)];
    for (name, color, which) in series {
        let points: Vec<(f64, f64)> = steps
            .iter()
            .map(|s| {
                let y = [s.latency.p50_ms, s.latency.p99_ms, s.latency.p999_ms][which];
                (s.offered_deliveries_per_s / 1000.0, y.max(y_min))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .draw_series(LineSeries::new(vec![(0.0, bound), (x_max, bound)], BLACK.stroke_width(1)))?
        .label(format!("p99 bound {bound} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    // Steps that did not hold (late or incomplete) get a cross.
    chart.draw_series(
        steps
            .iter()
            .filter(|s| !s.held)
            .map(|s| Cross::new((s.offered_deliveries_per_s / 1000.0, s.latency.p99_ms.max(y_min)), 8, BLACK)),
    )?;
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
