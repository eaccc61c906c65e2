//! The HTML page of `clipcap eval` and `clipcap report` (`eval.html`, `report.html`): one
//! self-contained file (thumbnails and plots inline, no network: its Content-Security-Policy allows
//! no fetch at all) with the summary table, the plots, and a gallery of every image with every
//! system's caption and scores, the words the systems disagree on marked. A few lines of plain script
//! sort the gallery (by disagreement, lowest CLIPScore, a system's CLIPScore) and filter its systems,
//! also from the address (`eval.html?sort=disagreement&only=greedy`).

use std::collections::BTreeSet;
use std::fmt::Write;

use base64::Engine;
use clipcap_core::imageio;

use crate::eval::{self, Captioned, Image, LATENCY, PLOTTED, Report};

/// Longest side of a gallery thumbnail, in pixels.
const THUMBNAIL: u32 = 320;

/// `text` safe inside HTML elements and quoted attributes. (Five replacements: not worth a crate.)
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The words of a caption, as the disagreement compares them: lower case, letters and digits.
fn words(caption: &str) -> BTreeSet<String> {
    caption
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// How much the captions of one image disagree: 1 minus the mean Jaccard similarity of the word sets
/// of every pair of captions (0: the same words; 1: no word in common). 0 with fewer than two.
pub fn disagreement(captions: &[&str]) -> f64 {
    let sets: Vec<BTreeSet<String>> = captions.iter().map(|c| words(c)).collect();
    let mut similarity = Vec::new();
    for (i, a) in sets.iter().enumerate() {
        for b in &sets[i + 1..] {
            let union = a.union(b).count();
            similarity.push(if union == 0 {
                1.0
            } else {
                a.intersection(b).count() as f64 / union as f64
            });
        }
    }
    if similarity.is_empty() {
        0.0
    } else {
        1.0 - similarity.iter().sum::<f64>() / similarity.len() as f64
    }
}

/// `caption` as HTML, its words that some other caption of the image lacks in `<mark>`.
fn marked(caption: &str, others: &[&str]) -> String {
    let shared: Vec<BTreeSet<String>> = others.iter().map(|c| words(c)).collect();
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            let lower = word.to_lowercase();
            if shared.iter().any(|s| !s.contains(&lower)) {
                let _ = write!(out, "<mark>{}</mark>", escape(word));
            } else {
                out.push_str(&escape(word));
            }
            word.clear();
        }
    };
    for c in caption.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push_str(&escape(&c.to_string()));
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The image at `image.path` as an inline JPEG thumbnail, or a line saying why there is none.
fn thumbnail(image: &Image) -> String {
    if image.path.as_os_str().is_empty() {
        return "<div class=noframe>frame not kept (captioning.keep_compared_frames)</div>".into();
    }
    let encoded = imageio::load_file(&image.path)
        .map_err(anyhow::Error::from)
        .and_then(|rgb| {
            let (w, h) = rgb.dimensions();
            let scale = (THUMBNAIL as f64 / w.max(h) as f64).min(1.0);
            let small = image::imageops::thumbnail(
                &rgb,
                ((w as f64 * scale).round() as u32).max(1),
                ((h as f64 * scale).round() as u32).max(1),
            );
            anyhow::Ok(imageio::encode_jpeg(&small, 80)?)
        });
    match encoded {
        Ok(jpeg) => format!(
            "<img alt=\"{}\" src=\"data:image/jpeg;base64,{}\">",
            escape(&image.id),
            base64::engine::general_purpose::STANDARD.encode(jpeg)
        ),
        Err(e) => {
            tracing::warn!("{}: no thumbnail: {e:#}", image.path.display());
            format!(
                "<div class=noframe>{}: {}</div>",
                escape(&image.path.display().to_string()),
                escape(&format!("{e:#}"))
            )
        }
    }
}

/// A table of `head` and `rows` (cells already HTML).
pub fn table(head: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut out = String::from("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out += "</tr>";
    for row in rows {
        out += "<tr>";
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out += "</tr>";
    }
    out + "</table>"
}

/// The systems' summary: the main columns, with intervals where they were drawn.
fn summary(report: &Report) -> String {
    let cell = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.4}"));
    let interval = |r: &eval::Row, metric: &str| {
        r.intervals
            .get(metric)
            .map_or("–".into(), |i| escape(&eval::interval_cell(metric, i)))
    };
    let mut head = vec!["system", "images", "BLEU-4", "ROUGE-L"];
    head.extend(PLOTTED);
    head.extend(["RefCLIPScore", "words", "distinct-2", LATENCY, "ms/caption p95"]);
    let rows = report.rows.iter().map(|r| {
        let s = r.scores.as_ref();
        let mut row = vec![
            escape(&r.system),
            format!(
                "{}{}",
                r.images,
                if r.failed > 0 {
                    format!(" ({} failed)", r.failed)
                } else {
                    String::new()
                }
            ),
            cell(s.map(|s| s.bleu[3])),
            cell(s.map(|s| s.rouge_l)),
        ];
        row.extend(PLOTTED.iter().map(|m| interval(r, m)));
        row.extend([
            cell(r.ref_clip_score),
            format!("{:.2}", r.diversity.mean_length),
            format!("{:.3}", r.diversity.distinct_2),
            interval(r, LATENCY),
            format!("{:.1}", r.ms_per_caption.p95),
        ]);
        row
    });
    table(&head, rows)
}

/// One gallery item: the image, each system's caption with its scores, the references.
fn item(order: usize, image: &Image, systems: &[(&str, &Captioned)]) -> String {
    let texts: Vec<&str> = systems.iter().map(|(_, c)| c.caption.as_str()).collect();
    let disagree = disagreement(&texts);
    let lowest = systems
        .iter()
        .filter_map(|(_, c)| c.clip_score)
        .fold(f64::INFINITY, f64::min);
    let mut out = format!(
        "<article class=item data-order={order} data-disagreement={disagree:.6} data-clip={}>{}\
         <h3>{} <span class=badge title=\"1 − mean Jaccard similarity of the captions' words\">disagreement {disagree:.2}</span></h3><table>",
        if lowest.is_finite() {
            format!("{lowest:.6}")
        } else {
            "Infinity".into()
        },
        thumbnail(image),
        escape(&image.id),
    );
    for (i, (system, c)) in systems.iter().enumerate() {
        let others: Vec<&str> = texts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| *t)
            .collect();
        let mut scores = Vec::new();
        if let Some(v) = c.clip_score {
            scores.push(format!("CLIPScore {v:.3}"));
        }
        if let Some(v) = c.ref_clip_score {
            scores.push(format!("RefCLIPScore {v:.3}"));
        }
        if c.votes > 0 {
            scores.push(format!(
                "<b>{} vote{}</b>",
                c.votes,
                if c.votes == 1 { "" } else { "s" }
            ));
        }
        if let Some(s) = &c.scores {
            scores.push(format!(
                "BLEU-4 {:.3} · ROUGE-L {:.3} · CIDEr-D {:.3}",
                s.bleu[3], s.rouge_l, s.cider_d
            ));
        }
        let _ = write!(
            out,
            "<tr data-system=\"{}\" data-clip={}><th>{}</th><td class=caption>{}</td><td class=scores>{}</td></tr>",
            escape(system),
            c.clip_score.map_or("Infinity".into(), |v| format!("{v:.6}")),
            escape(system),
            marked(&c.caption, &others),
            scores.join("<br>"),
        );
    }
    out += "</table>";
    if let Some(references) = &image.references {
        out += "<details open><summary>references</summary><ul>";
        for r in references {
            let _ = write!(out, "<li>{}</li>", escape(r));
        }
        out += "</ul></details>";
    }
    out + "</article>"
}

/// The gallery with its controls.
fn gallery(report: &Report) -> String {
    let systems: Vec<(&str, &Vec<Captioned>)> = report
        .rows
        .iter()
        .filter_map(|r| Some((r.system.as_str(), report.captions.get(&r.system)?)))
        .collect();
    let mut out = String::from(
        "<p class=controls><label>Sort <select id=sort><option value=order>image order</option>\
         <option value=disagreement>where the systems disagree most</option>\
         <option value=clip>lowest CLIPScore (any system)</option>",
    );
    for (name, _) in &systems {
        let _ = write!(
            out,
            "<option value=\"clip:{0}\">lowest CLIPScore of {0}</option>",
            escape(name)
        );
    }
    out += "</select></label> <label>Systems <select id=only><option value=\"\">all</option>";
    for (name, _) in &systems {
        let _ = write!(out, "<option value=\"{0}\">{0}</option>", escape(name));
    }
    out +=
        "</select></label> <span class=hint>marked words: not in every caption of the image</span></p><div id=gallery>";
    for (i, image) in report.frames.iter().enumerate() {
        let captions: Vec<(&str, &Captioned)> = systems
            .iter()
            .filter_map(|(name, captions)| Some((*name, captions.get(i)?)))
            .collect();
        out += &item(i, image, &captions);
    }
    out + "</div>"
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
.plots svg{max-width:100%;height:auto}\
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:1em}\
.item{border:1px solid #ccc;border-radius:6px;padding:.6em;min-width:0}.item img{float:left;margin:0 .8em .5em 0;max-width:200px}\
.item table{clear:both;width:100%;table-layout:fixed}.item th{width:24%;overflow-wrap:anywhere}.item h3{margin:.2em 0}\
.caption{font-size:1.1em}.scores{width:30%;font-size:.8em;color:#555}mark{background:#ffe08a}\
.badge{font-size:.75em;font-weight:normal;background:#eee;border-radius:4px;padding:.1em .4em}\
.noframe{color:#888;font-style:italic}.hint{color:#666;font-size:.85em}";

/// Sorts the gallery by the chosen key and hides the rows of the systems not chosen; the address's
/// `?sort=KEY&only=SYSTEM` chooses them on load (a link to a view).
const SCRIPT: &str = "const g=document.getElementById('gallery'),sort=document.getElementById('sort'),only=document.getElementById('only');\
function key(el){const k=sort.value;if(k==='order')return +el.dataset.order;if(k==='disagreement')return -el.dataset.disagreement;\
if(k==='clip')return +el.dataset.clip;const row=[...el.querySelectorAll('tr[data-system]')].find(r=>r.dataset.system===k.slice(5));\
return row?+row.dataset.clip:Infinity}\
function apply(){[...g.children].sort((a,b)=>key(a)-key(b)||a.dataset.order-b.dataset.order).forEach(el=>g.appendChild(el));\
for(const r of g.querySelectorAll('tr[data-system]'))r.hidden=only.value!==''&&r.dataset.system!==only.value}\
sort.onchange=apply;only.onchange=apply;\
const q=new URLSearchParams(location.search);if(q.has('sort'))sort.value=q.get('sort');if(q.has('only'))only.value=q.get('only');apply();";

/// The whole page: `report`'s table, `plots` (SVG text by metric), `sections` (a heading and its
/// HTML each: the votes of `clipcap report`), and the gallery.
pub fn page(title: &str, report: &Report, plots: &[(&str, String)], sections: &[(String, String)]) -> String {
    let mut out = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
         <title>{0}</title><style>{STYLE}</style></head><body><h1>{0}</h1><p>{1} images{2}.</p><h2>Systems</h2>{3}",
        escape(title),
        report.images,
        if report.interrupted { " (interrupted)" } else { "" },
        summary(report),
    );
    let significant = report.significant();
    if !significant.is_empty() {
        out += "<p>Differences whose 95% interval (paired bootstrap) excludes 0:</p><ul>";
        for s in significant {
            let _ = write!(out, "<li>{}</li>", escape(&s));
        }
        out += "</ul>";
    }
    for note in &report.notes {
        let _ = write!(out, "<p class=hint>Note: {}</p>", escape(note));
    }
    if !plots.is_empty() {
        out += "<h2>Quality against latency</h2><div class=plots>";
        for (_, svg) in plots {
            // Inline SVG: everything after the XML declaration, if the backend wrote one.
            out += svg.find("<svg").map_or(svg.as_str(), |at| &svg[at..]);
        }
        out += "</div>";
    }
    for (heading, html) in sections {
        let _ = write!(out, "<h2>{}</h2>{html}", escape(heading));
    }
    out += "<h2 id=pictures>Gallery</h2>";
    out += &gallery(report);
    let _ = writeln!(out, "<script>{SCRIPT}</script></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disagreement_is_zero_for_the_same_words_and_one_for_none_shared() {
        assert_eq!(disagreement(&["A red square.", "a red square"]), 0.0);
        assert_eq!(disagreement(&["a red square", "two blue circles"]), 1.0);
        // {a, red, square} against {a, blue, square}: 2 of 4 words shared.
        assert_eq!(disagreement(&["a red square", "a blue square"]), 0.5);
        assert_eq!(disagreement(&["alone"]), 0.0);
    }

    #[test]
    fn words_missing_from_another_caption_are_marked_and_text_is_escaped() {
        assert_eq!(
            marked("a red <square>", &["a blue square"]),
            "a <mark>red</mark> &lt;square&gt;"
        );
    }
}
