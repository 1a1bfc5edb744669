//! The chart of a run (SVG, beside the text report): rows committed, what the
//! windows hold, and each commit's latency, over the same time axis.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::Outcome;

const MIB: f64 = (1u64 << 20) as f64;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn panel(
    area: &Area<'_>,
    title: &str,
    x_max: f64,
    points: &[(f64, f64)],
    color: RGBColor,
    dots: bool,
) -> anyhow::Result<()> {
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the daemons started")
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| anyhow::anyhow!("chart axes: {e}"))?;
    if dots {
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )
            .map_err(|e| anyhow::anyhow!("chart points: {e}"))?;
    } else {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("chart line: {e}"))?;
    }
    Ok(())
}

/// Write the chart of `o` to `path`.
pub fn write(path: &Path, o: &Outcome) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let root = root
        .titled(&o.scenario, ("sans-serif", 18))
        .map_err(|e| anyhow::anyhow!("chart title: {e}"))?;
    let areas = root.split_evenly((3, 1));
    let x_max = o.wall.max(1.0);
    let rows: Vec<(f64, f64)> = o.samples.iter().map(|s| (s.t, s.rows / 1e6)).collect();
    let held: Vec<(f64, f64)> = o
        .samples
        .iter()
        .map(|s| (s.t, s.held_bytes / MIB))
        .collect();
    let latency: Vec<(f64, f64)> = o
        .commits
        .iter()
        .map(|c| {
            let t = (c.at - o.started).num_milliseconds() as f64 / 1000.0;
            (t, c.ms as f64)
        })
        .collect();
    panel(
        &areas[0],
        "rows committed, millions (the slope is the throughput)",
        x_max,
        &rows,
        RGBColor(31, 119, 180),
        false,
    )?;
    panel(
        &areas[1],
        "open and committing windows, MiB (all tables)",
        x_max,
        &held,
        RGBColor(44, 160, 44),
        false,
    )?;
    panel(
        &areas[2],
        "commit latency, ms (one dot per commit)",
        x_max,
        &latency,
        RGBColor(214, 39, 40),
        true,
    )?;
    root.present()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
