//! The kiosk page at `/` in headless Chromium (Debian's `chromium` and `chromium-driver`), driven over
//! the WebDriver protocol: it loads, shows the running daemon's caption and frame in large type with
//! the decoder comparison, and updates by itself when the camera (here a watched folder) sees something new;
//! with a read-only token in its address it shows the same and cannot vote.

mod common;

use std::time::Duration;

use common::Daemon;
use common::browser::Browser;
use serde_json::json;

#[test]
fn kiosk_page_shows_and_follows_the_daemons_captions() {
    let daemon = Daemon::start(
        "[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=2\"]\nvotes = true",
        &[],
    );
    daemon.drop_image("08202.png");
    daemon.wait_until(
        || ureq::get(&format!("{}/v1/caption/latest", daemon.url)).call().is_ok(),
        "a caption",
    );
    let first = daemon.get_json("/v1/caption/latest");

    let browser = Browser::start();
    browser.command("url", json!({"url": format!("{}/", daemon.url)}));
    let text = browser.wait_for("return document.getElementById('caption').textContent", |v| {
        v == &first["caption"]
    });
    assert_eq!(text, first["caption"]);
    // The frame arrived, and the caption is readable across a room: large type on a 1280 px screen.
    browser.wait_for("return document.getElementById('frame').naturalWidth", |v| {
        v.as_u64() == Some(224)
    });
    let size = browser.script("return parseFloat(getComputedStyle(document.getElementById('caption')).fontSize)");
    assert!(size.as_f64().unwrap() >= 48.0, "caption font size {size} px");
    // The decoders side by side, each with its CLIPScore, and their running statistics.
    let rows = browser.wait_for(
        "return [...document.querySelectorAll('#compare li')].map(li => li.textContent)",
        |v| v.as_array().is_some_and(|a| a.len() == 2),
    );
    assert!(rows[0].as_str().unwrap().starts_with("greedy"), "{rows}");
    assert!(rows[1].as_str().unwrap().starts_with("beam:num_beams=2"), "{rows}");
    let scored = rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.as_str().unwrap().contains("CLIPScore "));
    assert!(scored, "{rows}");
    let stats = browser.wait_for(
        "return [...document.querySelectorAll('#stats tbody tr')].map(tr => tr.cells[0].textContent + ' ' + tr.cells[3].textContent)",
        |v| v.as_array().is_some_and(|a| a.len() == 2),
    );
    assert_eq!(stats[1], "greedy primary", "{stats}");
    // A person taps "best" under the beam caption: the vote reaches the daemon.
    // The buttons appear once the page knows votes are on (from /v1/compare).
    browser.wait_for("return document.querySelectorAll('#compare button').length", |v| v == 2);
    browser.script("document.querySelectorAll('#compare li')[1].querySelector('button').click()");
    browser.wait_for(
        "return document.querySelectorAll('#compare button')[1].textContent",
        |v| v == "voted",
    );
    assert_eq!(daemon.log_records("vote")[0]["decoder"], "beam:num_beams=2");

    // A new scene: the page follows the event stream without a reload.
    daemon.drop_image("08209.png");
    let id = browser.wait_for("return document.getElementById('caption').dataset.id", |v| {
        v != &json!(first["id"].to_string())
    });
    let second = daemon.get_json("/v1/caption/latest");
    assert_eq!(id, json!(second["id"].to_string()));
    assert_eq!(
        browser.script("return document.getElementById('caption').textContent"),
        second["caption"]
    );
    assert_ne!(
        second["caption"], first["caption"],
        "the two demo images have different captions"
    );
    assert!(
        browser
            .script("return document.getElementById('frame').src")
            .as_str()
            .unwrap()
            .ends_with(&format!("caption={}", second["id"]))
    );
}

#[test]
fn kiosk_page_with_a_read_only_token_shows_captions_and_cannot_vote() {
    const TOKEN: &str = "fedcba9876543210fedcba9876543210";
    let daemon = Daemon::start_with(
        "tokens_file = \"{dir}/tokens\"\n[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=2\"]\nvotes = true",
        &[],
        |dir| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join("tokens");
            std::fs::write(&path, format!("{TOKEN} kiosk-screen read-only\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        },
    );
    daemon.drop_image("08202.png");
    daemon.wait_until(|| daemon.log_records("comparison").len() == 1, "a compared caption");
    let caption = &daemon.logged()[0]["caption"];

    let browser = Browser::start();
    browser.command("url", json!({"url": format!("{}/#token={TOKEN}", daemon.url)}));
    // The history, the stream, the frame and the statistics are read with the token.
    browser.wait_for("return document.getElementById('caption').textContent", |v| {
        v == caption
    });
    browser.wait_for("return document.getElementById('frame').naturalWidth", |v| {
        v.as_u64() == Some(224)
    });
    browser.wait_for("return document.querySelectorAll('#stats tbody tr').length", |v| v == 2);
    // A vote is a POST: the read-only token is refused, and nothing is recorded.
    browser.wait_for("return document.querySelectorAll('#compare button').length", |v| v == 2);
    browser.script("document.querySelectorAll('#compare li')[1].querySelector('button').click()");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        browser.script("return document.querySelectorAll('#compare button')[1].textContent"),
        "best"
    );
    assert!(daemon.log_records("vote").is_empty());
}

#[test]
fn kiosk_page_shows_a_tile_per_source_and_long_decoder_names_beside_their_captions() {
    let daemon = Daemon::start_with(
        "[captioning]\ninterval_ms = 100\ncompare = [\"beam:num_beams=3\", \"sample:top_p=0.9\"]\n\
         [[sources]]\nname = \"left\"\nkind = \"folder\"\nfolder = \"{dir}/left\"\npoll_ms = 50\n\
         [[sources]]\nname = \"right\"\nkind = \"folder\"\nfolder = \"{dir}/right\"\npoll_ms = 50\n",
        &[],
        |dir| {
            for side in ["left", "right"] {
                std::fs::create_dir(dir.join(side)).unwrap();
            }
        },
    );
    let put = |side: &str, image: &str| daemon.drop_image_into(side, image, image);
    let latest = |side: &str| {
        daemon
            .get_json("/v1/captions")
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == side)
            .cloned()
    };
    put("left", "08202.png");
    daemon.wait_until(|| latest("left").is_some(), "a caption of the left source");

    let browser = Browser::start();
    browser.command("url", json!({"url": format!("{}/", daemon.url)}));
    browser.wait_for("return document.querySelectorAll('.tile').length", |v| v == 2);
    // A caption of the other source arrives by the event stream, into its own tile.
    put("right", "08209.png");
    daemon.wait_until(|| latest("right").is_some(), "a caption of the right source");
    for side in ["left", "right"] {
        let want = latest(side).unwrap()["caption"].clone();
        let tile = format!("document.querySelector('.tile[data-source=\"{side}\"]')");
        browser.wait_for(&format!("return {tile}.querySelector('.caption').textContent"), |v| {
            v == &want
        });
        browser.wait_for(&format!("return {tile}.querySelector('img').naturalWidth"), |v| {
            v.as_u64() == Some(224)
        });
        let src = browser.script(&format!("return {tile}.querySelector('img').src"));
        assert!(src.as_str().unwrap().contains(&format!("source={side}")), "{src}");
    }
    assert_ne!(latest("left").unwrap()["caption"], latest("right").unwrap()["caption"]);
    // The comparison's rows: each decoder's name ends before its caption begins (1280 px wide).
    let gaps = browser.wait_for(
        "return [...document.querySelectorAll('#compare li')].map(li => \
           li.querySelector('.text').getBoundingClientRect().left - li.querySelector('b').getBoundingClientRect().right)",
        |v| v.as_array().is_some_and(|a| a.len() == 3),
    );
    assert!(
        gaps.as_array().unwrap().iter().all(|g| g.as_f64().unwrap() >= 0.0),
        "{gaps}"
    );
}
