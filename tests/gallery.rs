//! The pages of `clipcap eval` and `clipcap report` (`eval.html`, `report.html`) in headless Chromium
//! cut off the network: every image is shown with every system's caption, sorting by disagreement
//! puts the image the captions disagree on most first, and nothing is fetched. The plots' intervals
//! are read back from the SVG and equal the table's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::browser::Browser;
use common::{Daemon, demo_image};
use serde_json::{Value, json};

fn clipcap(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clipcap"))
        .args(args)
        .env("CLIPCAP__PLUGINS__DIRECTORIES", common::plugin_dir())
        .env("CLIPCAP__PLUGINS__ALLOW_INSECURE", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "clipcap {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The table of each system's intervals in the Markdown: system -> metric -> (value, low, high).
fn table_intervals(markdown: &str) -> BTreeMap<String, BTreeMap<String, (f64, f64, f64)>> {
    let mut lines = markdown
        .lines()
        .skip_while(|l| !l.starts_with("Each system with its 95% interval"))
        .skip(2);
    let head: Vec<String> = lines
        .next()
        .expect("the intervals table")
        .split('|')
        .map(|c| c.trim().to_string())
        .collect();
    let mut out = BTreeMap::new();
    for row in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let mut metrics = BTreeMap::new();
        for (metric, cell) in head.iter().zip(&cells).skip(2).filter(|(_, c)| c.contains('[')) {
            let numbers: Vec<f64> = cell
                .split(['[', ']', ',', ' '])
                .filter(|x| !x.is_empty())
                .map(|x| x.parse().unwrap())
                .collect();
            metrics.insert(metric.clone(), (numbers[0], numbers[1], numbers[2]));
        }
        out.insert(cells[1].to_string(), metrics);
    }
    out
}

/// `name="value"` of an SVG element.
fn attribute(element: &str, name: &str) -> Option<String> {
    let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(element[start..][..element[start..].find('"')?].to_string())
}

/// A plot read back from plotters' SVG: the pixel-to-value maps of both axes (from the tick labels)
/// and, by colour in drawing order (one per system, in the table's order), the pixel ends of the
/// vertical and horizontal error bars (each drawn as two caps, then the bar).
struct Plot {
    x: (f64, f64),
    y: (f64, f64),
    bars: Vec<([f64; 4], [f64; 4])>,
}

fn read_plot(svg: &str) -> Plot {
    let mut x_ticks = Vec::new();
    let mut y_ticks = Vec::new();
    for element in svg.split("<text").skip(1) {
        let Ok(value) = element[element.find('>').unwrap() + 1..element.find("</text>").unwrap()]
            .trim()
            .parse::<f64>()
        else {
            continue;
        };
        let at = |n: &str| attribute(element, n).unwrap().parse::<f64>().unwrap();
        if attribute(element, "text-anchor").as_deref() == Some("end") {
            y_ticks.push((at("y"), value));
        } else {
            x_ticks.push((at("x"), value));
        }
    }
    // value = a + b * pixel, through the first and last tick.
    let fit = |ticks: &[(f64, f64)]| {
        let ((p0, v0), (p1, v1)) = (ticks[0], ticks[ticks.len() - 1]);
        let b = (v1 - v0) / (p1 - p0);
        (v0 - b * p0, b)
    };
    let mut by_colour: Vec<(String, Vec<[f64; 4]>)> = Vec::new();
    for element in svg.split("<line").skip(1) {
        if attribute(element, "stroke-width").as_deref() != Some("2") {
            continue; // the grid
        }
        let colour = attribute(element, "stroke").unwrap();
        let ends = ["x1", "y1", "x2", "y2"].map(|n| attribute(element, n).unwrap().parse().unwrap());
        match by_colour.iter_mut().find(|(c, _)| *c == colour) {
            Some((_, lines)) => lines.push(ends),
            None => by_colour.push((colour, vec![ends])),
        }
    }
    Plot {
        x: fit(&x_ticks),
        y: fit(&y_ticks),
        bars: by_colour.into_iter().map(|(_, lines)| (lines[2], lines[5])).collect(),
    }
}

/// Each plot in `dir` draws the intervals of the table in `STEM.md`, within a pixel.
fn plots_equal_the_table(dir: &Path, stem: &str, metrics: &[&str]) {
    let table = table_intervals(&std::fs::read_to_string(dir.join(format!("{stem}.md"))).unwrap());
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap()).unwrap();
    let rows = json.get("comparison").unwrap_or(&json)["rows"]
        .as_array()
        .unwrap()
        .clone();
    let systems: Vec<&str> = rows.iter().map(|r| r["system"].as_str().unwrap()).collect();
    assert_eq!(table.len(), systems.len(), "{table:?}");
    for metric in metrics {
        let svg = std::fs::read_to_string(dir.join(format!("{stem}-{}.svg", metric.to_lowercase()))).unwrap();
        let plot = read_plot(&svg);
        assert_eq!(plot.bars.len(), systems.len(), "{metric}: one colour per system");
        for (system, (vertical, horizontal)) in systems.iter().zip(&plot.bars) {
            let of = |(a, b): (f64, f64), p: f64| a + b * p;
            let (quality, ms) = (table[*system][*metric], table[*system]["ms/caption p50"]);
            // Within a pixel, and the table's rounding (4 decimals; latency 1).
            let near = |drawn: f64, table: f64, per_pixel: f64, rounding: f64| {
                (drawn - table).abs() <= per_pixel.abs() + rounding
            };
            // The vertical bar runs from low (below, larger y) to high; the horizontal from low to high.
            let (low, high) = (of(plot.y, vertical[1]), of(plot.y, vertical[3]));
            assert!(
                near(low, quality.1, plot.y.1, 5e-5) && near(high, quality.2, plot.y.1, 5e-5),
                "{metric} of {system}: the plot draws [{low}, {high}], the table says {quality:?}"
            );
            let (low, high) = (of(plot.x, horizontal[0]), of(plot.x, horizontal[2]));
            assert!(
                near(low, ms.1, plot.x.1, 0.05) && near(high, ms.2, plot.x.1, 0.05),
                "latency of {system} on the {metric} plot: drawn [{low}, {high}], the table says {ms:?}"
            );
        }
    }
}

/// A gallery item as the browser shows it: its title, whether its image loaded (None: no image), and
/// its (system, caption) rows.
type Item = (String, Option<bool>, Vec<(String, String)>);

/// Opens `page` and returns its gallery.
fn gallery(browser: &Browser, page: &Path) -> Vec<Item> {
    browser.command("url", json!({"url": format!("file://{}", page.display())}));
    browser.wait_for("return [...document.images].every(i => i.complete)", |v| {
        v == &json!(true)
    });
    let items = browser.script(
        "return [...document.querySelectorAll('#gallery article')].map(a => [
            a.querySelector('h3').firstChild.textContent.trim(),
            a.querySelector('img') ? a.querySelector('img').naturalWidth > 0 : null,
            [...a.querySelectorAll('tr[data-system]')].map(r => [r.dataset.system, r.querySelector('.caption').textContent])])",
    );
    serde_json::from_value(items).unwrap()
}

fn sort_by(browser: &Browser, key: &str) -> String {
    browser
        .script(&format!(
            "const s = document.getElementById('sort'); s.value = {key:?}; s.dispatchEvent(new Event('change'));
         return document.querySelector('#gallery article h3').firstChild.textContent.trim()"
        ))
        .as_str()
        .unwrap()
        .to_string()
}

/// 1 - the mean Jaccard similarity of the captions' word sets, as the page means disagreement.
fn disagreement(captions: &[&str]) -> f64 {
    let sets: Vec<BTreeSet<String>> = captions
        .iter()
        .map(|c| {
            c.split(|x: char| !x.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect()
        })
        .collect();
    let mut pairs = Vec::new();
    for (i, a) in sets.iter().enumerate() {
        for b in &sets[i + 1..] {
            pairs.push(a.intersection(b).count() as f64 / a.union(b).count() as f64);
        }
    }
    1.0 - pairs.iter().sum::<f64>() / pairs.len() as f64
}

#[test]
fn eval_page_shows_every_image_and_caption_offline_and_sorts_by_disagreement() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.path().join("eval");
    let images = root.join("demo/images");
    clipcap(&[
        "eval",
        "--bundle",
        root.join("demo/bundle").to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--annotations",
        images.join("annotations.json").to_str().unwrap(),
        "--decoder",
        "greedy",
        "--decoder",
        "beam:num_beams=5",
        "--decoder",
        "sample:top_p=0.9",
        "--out",
        out.to_str().unwrap(),
    ]);
    plots_equal_the_table(&out, "eval", &["CIDEr-D", "CLIPScore"]);

    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let systems: Vec<String> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["system"].as_str().unwrap().to_string())
        .collect();
    let caption = |system: &str, i: usize| report["captions"][system][i]["caption"].as_str().unwrap().to_string();
    let ids: Vec<String> = report["captions"][&systems[0]]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 12);

    let browser = Browser::start();
    browser.offline();
    let items = gallery(&browser, &out.join("eval.html"));
    assert_eq!(items.len(), ids.len());
    for (i, (id, loaded, rows)) in items.iter().enumerate() {
        assert_eq!(*id, ids[i]);
        assert_eq!(*loaded, Some(true), "the image of {id} shows");
        let expected: Vec<(String, String)> = systems.iter().map(|s| (s.clone(), caption(s, i))).collect();
        assert_eq!(*rows, expected, "{id}");
    }
    // Sorted by disagreement, an image the captions disagree on most comes first.
    let scores: Vec<f64> = (0..ids.len())
        .map(|i| {
            disagreement(
                &systems
                    .iter()
                    .map(|s| caption(s, i))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let most = scores.iter().cloned().fold(f64::MIN, f64::max);
    assert!(most > 0.0, "the decoders disagree somewhere: {scores:?}");
    let first = sort_by(&browser, "disagreement");
    let at = ids.iter().position(|id| *id == first).unwrap();
    assert!(
        (scores[at] - most).abs() < 1e-9,
        "{first} first, disagreement {} against the most, {most}",
        scores[at]
    );
    // The address can choose the view.
    browser.command(
        "url",
        json!({"url": format!("file://{}?sort=disagreement", out.join("eval.html").display())}),
    );
    assert_eq!(
        browser.script("return document.querySelector('#gallery article h3').firstChild.textContent.trim()"),
        json!(first)
    );
    // Lowest CLIPScore of a system first; and one system's rows only.
    let clip = |i: usize| report["captions"]["greedy"][i]["clip_score"].as_f64().unwrap();
    let lowest = (0..ids.len()).min_by(|a, b| clip(*a).total_cmp(&clip(*b))).unwrap();
    assert_eq!(sort_by(&browser, "clip:greedy"), ids[lowest]);
    let shown = browser.script(
        "const o = document.getElementById('only'); o.value = 'greedy'; o.dispatchEvent(new Event('change'));
         return [...document.querySelectorAll('tr[data-system]')].filter(r => !r.hidden).map(r => r.dataset.system)",
    );
    assert_eq!(shown, json!(vec!["greedy"; ids.len()]));
    // Everything came with the page: nothing was fetched, and the two plots are inline.
    assert_eq!(
        browser.script("return performance.getEntriesByType('resource').length"),
        json!(0)
    );
    assert_eq!(
        browser.script("return document.querySelectorAll('.plots svg').length"),
        json!(2)
    );
}

#[test]
fn report_page_shows_the_kept_frames_with_their_captions_and_the_votes_as_ratings() {
    let mut daemon = Daemon::start(
        "[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=3\", \"sample:top_k=5\"]\nvotes = true\n\
         vote_addresses = false\nkeep_compared_frames = \"{dir}/frames\"\nkeep_compared_frames_mb = 5",
        &[],
    );
    let names = ["08200.png", "08203.png", "08208.png"];
    for (n, name) in names.iter().enumerate() {
        daemon.drop_image(name);
        daemon.wait_until(|| daemon.log_records("comparison").len() == n + 1, "a comparison");
    }
    let vote = |id: &Value, decoder: &str| {
        ureq::post(&format!("{}/v1/captions/{id}/vote", daemon.url))
            .config()
            .http_status_as_error(false)
            .build()
            .header("Content-Type", "application/json")
            .send(json!({"decoder": decoder}).to_string())
            .unwrap()
            .status()
            .as_u16()
    };
    let comparisons = daemon.log_records("comparison");
    for (c, decoder) in comparisons
        .iter()
        .zip(["beam:num_beams=3", "beam:num_beams=3", "greedy"])
    {
        assert_eq!(vote(&c["id"], decoder), 200);
    }
    // Without addresses, one vote per voter still holds.
    assert_eq!(vote(&comparisons[0]["id"], "greedy"), 409);
    assert_eq!(daemon.terminate().code(), Some(0));
    for v in daemon.log_records("vote") {
        assert!(
            v.get("client").is_none() && v["voter"].as_str().unwrap().starts_with("anonymous:"),
            "{v}"
        );
    }
    // Each comparison names its kept frame, the JPEG of what was captioned.
    for (c, name) in comparisons.iter().zip(names) {
        let frame = Path::new(c["frame"].as_str().unwrap());
        let kept = image::open(frame).unwrap().to_rgb8();
        assert_eq!(
            kept.dimensions(),
            image::open(demo_image(name)).unwrap().to_rgb8().dimensions()
        );
    }

    let out = daemon.dir.path().join("report");
    let log = daemon.log_path();
    clipcap(&["report", log.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    plots_equal_the_table(&out, "report", &["CLIPScore"]);
    let browser = Browser::start();
    browser.offline();
    let items = gallery(&browser, &out.join("report.html"));
    assert_eq!(items.len(), 3);
    for ((title, loaded, rows), c) in items.iter().zip(&comparisons) {
        assert!(title.starts_with(&format!("#{} ", c["id"])), "{title}");
        assert_eq!(*loaded, Some(true), "the kept frame of {title} shows");
        let mut expected = vec![("greedy".to_string(), c["caption"].as_str().unwrap().to_string())];
        for x in c["compare"].as_array().unwrap() {
            expected.push((
                x["decoder"].as_str().unwrap().into(),
                x["caption"].as_str().unwrap().into(),
            ));
        }
        assert_eq!(*rows, expected);
    }
    // Each vote shows beside the caption it chose.
    let voted = browser.script(
        "return [...document.querySelectorAll('#gallery article')].map(a => [...a.querySelectorAll('tr[data-system]')]
            .filter(r => r.querySelector('.scores').textContent.includes('1 vote')).map(r => r.dataset.system))",
    );
    assert_eq!(voted, json!([["beam:num_beams=3"], ["beam:num_beams=3"], ["greedy"]]));
    let ratings = browser.script("return [...document.querySelectorAll('table')].map(t => t.innerText).join('\\n')");
    let ratings = ratings.as_str().unwrap();
    assert!(
        ratings.contains("votes needed") && ratings.contains("rating"),
        "{ratings}"
    );
    assert_eq!(
        browser.script("return performance.getEntriesByType('resource').length"),
        json!(0)
    );

    // Frames copied off the device are found by file name with --frames; without them, captions only.
    let moved = daemon.dir.path().join("copied");
    std::fs::rename(daemon.dir.path().join("frames"), &moved).unwrap();
    let thumbnails = |html: &str| html.matches("src=\"data:image/jpeg;base64,").count();
    clipcap(&["report", log.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!((thumbnails(&page), page.matches("class=noframe").count()), (0, 3));
    clipcap(&[
        "report",
        log.to_str().unwrap(),
        "--frames",
        moved.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        thumbnails(&std::fs::read_to_string(out.join("report.html")).unwrap()),
        3
    );

    // Grouped by the live bundle and by the primary decoder: one group each here, with every frame.
    let json = clipcap(&["report", log.to_str().unwrap(), "--group-by", "bundle", "--json"]);
    let grouped: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(grouped["group_by"], "Bundle");
    assert_eq!(grouped["groups"][0][0], "bundle");
    assert_eq!(grouped["groups"][0][1]["compared_frames"], 3);
    let json = clipcap(&["report", log.to_str().unwrap(), "--group-by", "decoder", "--json"]);
    let grouped: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(grouped["groups"][0][0], "greedy");
    assert_eq!(grouped["groups"][0][1]["votes"], 3);
}
