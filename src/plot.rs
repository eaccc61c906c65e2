//! The quality-against-latency plot of `clipcap eval` and `clipcap report`, as SVG: one point per
//! system with its 95% bootstrap interval on both axes (the intervals of the table), one colour per
//! system named in a legend, and the Pareto front (the systems no other is both faster and better
//! than) drawn through them. Axes span the intervals, not zero.

use clipcap_core::metrics::bootstrap::Interval;
use plotters::prelude::*;

/// One system on a plot: latency on x, quality on y.
pub struct Point {
    pub system: String,
    /// Median ms per caption.
    pub ms: Interval,
    pub quality: Interval,
}

/// The points no other point dominates (at most as slow and at least as good, one of them strictly),
/// by increasing latency.
pub fn pareto_front(points: &[Point]) -> Vec<&Point> {
    let dominates = |a: &Point, b: &Point| {
        a.ms.value <= b.ms.value
            && a.quality.value >= b.quality.value
            && (a.ms.value < b.ms.value || a.quality.value > b.quality.value)
    };
    let mut front: Vec<&Point> = points
        .iter()
        .filter(|p| !points.iter().any(|q| dominates(q, p)))
        .collect();
    front.sort_by(|a, b| a.ms.value.total_cmp(&b.ms.value));
    front
}

/// The range of `low..high` over `values`, widened by a tenth on both sides (a point alone still
/// gets a range).
fn span(values: impl Iterator<Item = Interval>) -> std::ops::Range<f64> {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), i| {
        (l.min(i.low.min(i.value)), h.max(i.high.max(i.value)))
    });
    let pad = ((high - low) * 0.1).max(high.abs() * 0.02).max(1e-6);
    low - pad..high + pad
}

/// The plot of `metric` against latency, as SVG text.
pub fn render(metric: &str, points: &[Point]) -> anyhow::Result<String> {
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{metric} against latency (95% intervals, bootstrap over the images)"),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                span(points.iter().map(|p| p.ms)),
                span(points.iter().map(|p| p.quality)),
            )?;
        chart
            .configure_mesh()
            .x_desc("ms per caption (median)")
            .y_desc(metric)
            .draw()?;
        let front: Vec<(f64, f64)> = pareto_front(points)
            .iter()
            .map(|p| (p.ms.value, p.quality.value))
            .collect();
        chart
            .draw_series(LineSeries::new(front, BLACK.mix(0.4).stroke_width(2)))?
            .label("Pareto front")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4).stroke_width(2)));
        for (i, p) in points.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let (x, y) = (p.ms.value, p.quality.value);
            chart
                .draw_series([ErrorBar::new_vertical(
                    x,
                    p.quality.low,
                    y,
                    p.quality.high,
                    colour.stroke_width(2),
                    10,
                )])?
                .label(p.system.clone())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
            chart.draw_series([ErrorBar::new_horizontal(
                y,
                p.ms.low,
                x,
                p.ms.high,
                colour.stroke_width(2),
                10,
            )])?;
            chart.draw_series([Circle::new((x, y), 5, colour.filled())])?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("cannot draw the plot of {metric}: {e}"))?;
    drop(root);
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(system: &str, ms: f64, quality: f64) -> Point {
        let at = |value| Interval {
            value,
            low: value,
            high: value,
        };
        Point {
            system: system.into(),
            ms: at(ms),
            quality: at(quality),
        }
    }

    #[test]
    fn the_front_keeps_the_systems_nothing_beats_on_both() {
        let points = [
            point("slow-best", 60.0, 0.9),
            point("fast", 20.0, 0.5),
            point("dominated", 40.0, 0.4),
            point("middle", 30.0, 0.7),
            point("tied-slower", 30.0, 0.6),
        ];
        let names: Vec<&str> = pareto_front(&points).iter().map(|p| p.system.as_str()).collect();
        assert_eq!(names, ["fast", "middle", "slow-best"]);
    }
}
