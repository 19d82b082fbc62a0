//! A real browser for the console's tests: Debian's headless Chromium driven over
//! WebDriver (its `chromedriver`, on a loopback port of its own per test) with the
//! fantoccini crate. `deploy/local/test` installs both packages. Screenshots go to
//! `target/console-screenshots/` (`CONSOLE_SCREENSHOTS` to put them elsewhere).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium and the driver that steers it; both stop when dropped.
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    /// The console's address (`http://127.0.0.1:port`).
    pub base: String,
    _profile: TempDir,
}

/// A folder removed when dropped (the browser's profile).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Where the tests write their screenshots.
pub fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("CONSOLE_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    // Chromium takes only canonical paths for a file to upload.
    dir.canonicalize().unwrap_or(dir)
}

impl Browser {
    /// A fresh browser (no cookies) at a 1366x768 laptop's size.
    pub async fn start(base: &str) -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: deploy/local/test installs Debian's chromium and chromium-driver"
            );
        }
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = TempDir(
            std::env::temp_dir().join(format!("renewal-chromium-{}", uuid::Uuid::new_v4())),
        );
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1366,768".into(),
            format!("--user-data-dir={}", profile.0.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut waited = Duration::ZERO;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if waited < Duration::from_secs(20) => {
                    tracing_note(&e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    waited += Duration::from_millis(200);
                }
                Err(e) => panic!("chromedriver on {url} did not start a session: {e}"),
            }
        };
        Browser {
            client,
            driver,
            base: base.trim_end_matches('/').to_owned(),
            _profile: profile,
        }
    }

    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    /// The element `css` names, waited for up to ten seconds.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                let page = self.client.source().await.unwrap_or_default();
                let page: String = page.chars().take(2000).collect();
                panic!("{css} did not appear ({e}) on {url}:\n{page}")
            }
        }
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("text of {css}: {e}"))
    }

    pub async fn source(&self) -> String {
        self.client.source().await.expect("the page's source")
    }

    /// Signs in through the development issuer's page as `role` with the scope given
    /// (empty: none), and lands on the role's start page.
    pub async fn sign_in(&self, role: &str, agent: &str, branch: &str, city: &str) {
        self.goto("/console/").await;
        self.click("#sign-in").await;
        self.find("#role")
            .await
            .select_by_value(role)
            .await
            .expect("the role");
        for (field, value) in [
            ("#agent_code", agent),
            ("#branch_code", branch),
            ("#city_code", city),
        ] {
            if !value.is_empty() {
                self.type_into(field, value).await;
            }
        }
        self.click("#issue").await;
        self.find("#who").await;
    }

    /// A screenshot of what the browser shows, as `name.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("resized");
    }

    /// The session cookie, to fetch what the page links to (a download) as this person.
    pub async fn session_cookie(&self) -> String {
        let cookie = self
            .client
            .get_named_cookie("renewal_console")
            .await
            .expect("the session cookie");
        format!("renewal_console={}", cookie.value())
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

fn tracing_note(e: &fantoccini::error::NewSessionError) {
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("waiting for chromedriver: {e}");
    }
}
