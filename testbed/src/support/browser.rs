//! A real browser for the dashboard's tests: Debian's Chromium, headless, driven over WebDriver
//! by its chromedriver. Each [`Browser`] is a session with a profile of its own, so two of them
//! are two people with two cookie jars.
//!
//! Reads go through small scripts run in the page (`eval`): one round trip returns what a test
//! checks, and nothing holds on to an element the page may have replaced since.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::{Identity, eventually};

/// A running chromedriver on loopback; stopped when dropped, with every browser it started.
/// They share a process group of their own, so a test that fails before it closes its browsers
/// leaves no Chromium behind.
pub struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts `chromedriver` on a port of its choosing.
    pub fn start() -> Driver {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; hack/test-deps.sh installs it)");
        let stdout = child.stdout.take().expect("chromedriver's output");
        let mut lines = BufReader::new(stdout).lines();
        let port = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("started successfully on port ")
                    .nth(1)
                    .map(|p| p.trim_end_matches('.').to_string())
            })
            .expect("chromedriver says which port it listens on");
        // Its further output must be read, or it blocks once the pipe is full.
        std::thread::spawn(move || lines.for_each(drop));
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: signals the process group this driver leads (its id is the group's).
        unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One headless Chromium session.
pub struct Browser {
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A new browser with an empty profile, 1280×900.
    pub async fn open(driver: &Driver) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        // Without the background networking switches Chromium keeps calling home, which this
        // machine's closed network refuses.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-first-run",
            // No crash handler: it would run in a session of its own, outside the driver's group.
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--window-size=1280,900",
            "--lang=en-US",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": "/usr/bin/chromium", "args": args}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a Chromium session from chromedriver");
        Browser {
            client,
            _profile: profile,
        }
    }

    /// Loads `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigating");
    }

    /// What `script` (a function body; `arguments` are `args`) returns in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .expect("a script in the page")
    }

    /// Polls `script` until `accept` takes its value, then returns it.
    pub async fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        accept: impl Fn(&Value) -> Option<T>,
    ) -> T {
        // A script may fail while the page changes (an element not there yet): not yet, then.
        eventually(what, timeout, || async {
            let value = self
                .client
                .execute(script, vec![])
                .await
                .map_err(|e| e.to_string())?;
            accept(&value).ok_or_else(|| value.to_string())
        })
        .await
    }

    /// Clicks the element `css` once it is there.
    pub async fn click(&self, css: &str) {
        self.on(css, "click", |e| async move { e.click().await.map(drop) })
            .await;
    }

    /// Types `text` into the element `css` (emptied first).
    pub async fn fill(&self, css: &str, text: &str) {
        self.on(css, "fill", |e| async move {
            e.clear().await?;
            e.send_keys(text).await
        })
        .await;
    }

    /// Picks the option whose value is `value` in the select `css`.
    pub async fn select(&self, css: &str, value: &str) {
        self.on(css, "select", |e| async move { e.select_by_value(value).await })
            .await;
    }

    /// Does `act` to the element `css` once it is there. A live page replaces elements as
    /// changes arrive: one replaced between finding and acting is found again.
    async fn on<F, Fut>(&self, css: &str, what: &str, act: F)
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        eventually(&format!("{what} {css}"), super::DEADLINE, || async {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .map_err(|e| e.to_string())?;
            act(element).await.map_err(|e| e.to_string())
        })
        .await
    }

    /// Saves a PNG of the window as `name`.png in `screenshots()`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        // From the top of the page, as a person arriving there sees it.
        let _ = self.client.execute("window.scrollTo(0, 0)", vec![]).await;
        self.picture(name).await
    }

    /// Saves a PNG of the window as `name`.png, scrolled to the element `css`.
    pub async fn screenshot_from(&self, name: &str, css: &str) -> PathBuf {
        let scroll = "document.querySelector(arguments[0])?.scrollIntoView()";
        let _ = self.client.execute(scroll, vec![json!(css)]).await;
        self.picture(name).await
    }

    async fn picture(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing a screenshot");
        path
    }

    /// Ends the session (its Chromium exits).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// The dashboard served on a loopback port as it is deployed (each request as its person's
/// token, forwarded to the bed's API server), for as long as the test runs: its base URL.
pub async fn dashboard() -> String {
    use trainjob_operator::dashboard;
    let listener = dashboard::listen(([127, 0, 0, 1], 0).into())
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(super::bed().kubeconfig(Identity::Admin), &options)
        .await
        .expect("the bed's cluster");
    let identity = dashboard::Identity::bearer(config);
    tokio::spawn(dashboard::serve(listener, identity, std::future::pending()));
    format!("http://{addr}")
}

/// Signs `browser` in at `base` as `who` on the sign-in page, and waits until the page says
/// who it is.
pub async fn sign_in(browser: &Browser, base: &str, who: Identity) {
    browser.goto(&format!("{base}/")).await;
    browser.fill("#token", &who.token()).await;
    browser.click("#signin button[type=submit]").await;
    let said = format!("Signed in as {}", who.name());
    browser
        .until(
            "the signed-in user",
            super::DEADLINE,
            "return document.querySelector('#user')?.textContent",
            |v| (v.as_str() == Some(said.as_str())).then_some(()),
        )
        .await;
}

/// Where screenshots go: `$TRAINJOB_SCREENSHOTS`, else `target/screenshots` (`make screenshots`
/// copies a run's into docs/images).
pub fn screenshots() -> PathBuf {
    std::env::var_os("TRAINJOB_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots"))
}
