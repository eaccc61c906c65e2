//! Headless Chromium (Debian's `chromium` and `chromium-driver`) driven over the WebDriver protocol:
//! the kiosk page's and the HTML reports' tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::free_port;

/// A Chromium session behind chromedriver; both are ended when dropped.
pub struct Browser {
    driver: Child,
    session: String,
}

impl Browser {
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/setup-lab.sh installs it)");
        let mut browser = Browser {
            driver,
            session: format!("http://127.0.0.1:{port}/session"),
        };
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--window-size=1280,800"],
            },
        }}});
        let start = Instant::now();
        let created = loop {
            match ureq::post(&browser.session).send_json(&capabilities) {
                Ok(response) => break response.into_body().read_json::<Value>().unwrap(),
                Err(_) if start.elapsed() < Duration::from_secs(30) => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => panic!("chromedriver did not start a Chromium session: {e}"),
            }
        };
        let id = created["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser.session = format!("{}/{id}", browser.session);
        browser
    }

    pub fn command(&self, path: &str, body: Value) -> Value {
        let response = ureq::post(&format!("{}/{path}", self.session))
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&body)
            .unwrap();
        let status = response.status();
        let mut reply = response.into_body().read_json::<Value>().unwrap();
        assert!(status.is_success(), "chromedriver refused `{path}` {body}: {reply}");
        reply["value"].take()
    }

    /// Cuts the browser off the network (Chromium's network emulation): what loads after this
    /// loads without it.
    pub fn offline(&self) {
        self.command(
            "chromium/network_conditions",
            json!({"network_conditions": {"offline": true, "latency": 0, "download_throughput": 0, "upload_throughput": 0}}),
        );
    }

    pub fn script(&self, script: &str) -> Value {
        self.command("execute/sync", json!({"script": script, "args": []}))
    }

    /// Polls `script` for up to 60 s until `ok` accepts its value, which is returned.
    pub fn wait_for(&self, script: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let value = self.script(script);
            if ok(&value) {
                return value;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out on `{script}`, last value {value}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.session).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
