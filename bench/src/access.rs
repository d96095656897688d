//! Control-plane access benchmarks (issue 10): what authentication,
//! authorization and the audit log cost on the API, and what failed
//! authentications cost in memory.
//!
//! - `access`: HTTP PUT of a MeshTimeout → the event in a subscriber of the
//!   global's cache (the path of `latency`, [`crate::ApiProbe`]) on three
//!   API servers in this process, each on its own embedded store in a
//!   temporary directory:
//!   a) `unauthenticated: true`, the API as it was before access control
//!   (the baseline); b) the admin token, with only the `admin` role and
//!   binding the global creates; c) a user token whose group is bound, by
//!   one of 100 AccessRoleBindings, to one of 100 AccessRoles (the others
//!   name other meshes, users and groups). Every mode writes the same
//!   number of policies, in rounds whose order rotates, so that drift of the
//!   machine falls on all three alike. Beside it, the access check alone
//!   (`authenticate` + `can` of one such PUT) timed in this process.
//! - `access --failed-auth`: a real `meridian-global` process (release, embedded
//!   store) answers 10,000 and then 10,000 more requests with bad
//!   credentials of six kinds, each token different; its RSS before and
//!   after, and the time of a 401.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use meridian_core::access::{Access, Target, UserClaims, USER_TOKEN_ISSUER};
use meridian_core::{ResourceKey, ResourceType};
use meridian_server::access::AccessConfig;
use meridian_server::identity::jwt;
use meridian_store::embedded::EmbeddedStore;
use meridian_store::Store;
use serde_json::{json, Value};

use crate::kds::{agent, agent_without_tokens, bearer, cpu_time_of, header, http, row, wait_ready, GlobalProcess};
use crate::{peak_rss_kib, policy, summarize, ApiProbe, Summary};

pub struct AccessOptions {
    /// PUTs measured per mode.
    pub count: usize,
    /// The count is split into this many rounds of (a, b, c).
    pub rounds: usize,
    /// PUTs per mode before the rounds, not counted.
    pub warmup: usize,
    /// AccessRoles (and as many bindings) in mode c.
    pub roles: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unauthenticated,
    Admin,
    User,
}

impl Mode {
    fn label(self, roles: usize) -> String {
        match self {
            Mode::Unauthenticated => "a) unauthenticated (baseline)".into(),
            Mode::Admin => "b) admin token, admin role only".into(),
            Mode::User => format!("c) user token, {roles} roles + bindings"),
        }
    }
}

/// One API server and what was measured on it.
struct Subject {
    mode: Mode,
    probe: ApiProbe,
    /// What the measured PUTs present.
    token: Option<String>,
    /// The next policy index to write.
    next: usize,
    to_event: Vec<Duration>,
    to_response: Vec<Duration>,
    /// p50 of the PUT → event time of each round.
    round_p50: Vec<Duration>,
    /// CPU time of this process (client and server) over the measured PUTs.
    cpu: Duration,
    _dir: tempfile::TempDir,
}

/// The mesh of the sanity checks: no role of mode c names it.
const ELSEWHERE: &str = "elsewhere";
/// The user of mode c, named by no binding: only its group is bound.
const USER: &str = "alice";

pub async fn access(o: AccessOptions) -> anyhow::Result<()> {
    if o.count == 0 || o.rounds == 0 || o.roles == 0 {
        bail!("--count, --rounds and --roles must be at least 1");
    }
    let chosen = o.roles * 37 / 100;
    let mut subjects = Vec::new();
    for mode in [Mode::Unauthenticated, Mode::Admin, Mode::User] {
        subjects.push(subject(mode, o.roles, chosen).await?);
    }

    for s in &mut subjects {
        let range = s.next..s.next + o.warmup;
        s.next += o.warmup;
        s.probe.writes(s.token.as_deref(), range).await?;
    }
    for round in 0..o.rounds {
        let n = o.count / o.rounds + usize::from(round < o.count % o.rounds);
        for k in 0..subjects.len() {
            let s = &mut subjects[(k + round) % 3];
            let range = s.next..s.next + n;
            s.next += n;
            let cpu = cpu_time_of("self");
            let (event, response) = s.probe.writes(s.token.as_deref(), range).await?;
            s.cpu += cpu_time_of("self").saturating_sub(cpu);
            if !event.is_empty() {
                s.round_p50.push(summarize(event.clone()).p50);
            }
            s.to_event.extend(event);
            s.to_response.extend(response);
        }
    }

    let mut checks = Vec::new();
    for s in &subjects {
        checks.push(check_cost(s, CHECKS)?);
    }

    println!(
        "access: {} PUTs of a MeshTimeout per mode in {} rounds (order a,b,c then b,c,a then c,a,b…), after {} not counted; \
         three API servers in this process, each on its own embedded store; times in ms\n",
        o.count, o.rounds, o.warmup
    );
    header("path");
    let summaries: Vec<(Summary, Summary)> = subjects
        .iter()
        .map(|s| (summarize(s.to_event.clone()), summarize(s.to_response.clone())))
        .collect();
    for (s, (event, _)) in subjects.iter().zip(&summaries) {
        row(&format!("{}: PUT → event", s.mode.label(o.roles)), event);
    }
    for (s, (_, response)) in subjects.iter().zip(&summaries) {
        row(&format!("{}: PUT → response", s.mode.label(o.roles)), response);
    }

    let base_event = summaries[0].0.p50;
    let base_response = summaries[0].1.p50;
    let percent = |d: Duration, base: Duration| (d.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0;
    println!();
    println!(
        "| {:<40} | {:>11} | {:>11} | {:>14} | {:>12} | {:<30} |",
        "mode", "p50 event", "p50 resp.", "CPU per PUT", "check", "p50 event per round"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(42),
        "-".repeat(13),
        "-".repeat(13),
        "-".repeat(16),
        "-".repeat(14),
        "-".repeat(32)
    );
    for ((s, (event, response)), check) in subjects.iter().zip(&summaries).zip(&checks) {
        let vs = |d: Duration, base: Duration| {
            if s.mode == Mode::Unauthenticated {
                "baseline".to_string()
            } else {
                format!("{:+.1} %", percent(d, base))
            }
        };
        let rounds: Vec<String> = s.round_p50.iter().map(|d| crate::kds::ms(*d)).collect();
        println!(
            "| {:<40} | {:>11} | {:>11} | {:>11} ms | {:>9} µs | {:<30} |",
            s.mode.label(o.roles),
            vs(event.p50, base_event),
            vs(response.p50, base_response),
            format!("{:.3}", s.cpu.as_secs_f64() * 1000.0 / s.to_event.len() as f64),
            format!("{:.2}", check.as_secs_f64() * 1e6),
            rounds.join(" / ")
        );
    }
    let c = &summaries[2];
    println!(
        "\nc) vs a) at p50: PUT → event {:+.1} %, PUT → response {:+.1} % (goal: < 5 %). \
         CPU is this whole process (the HTTP client and all three servers), from /proc/self/stat in 10 ms ticks. \
         check: the server's authenticate + authorize of one such PUT, called {CHECKS} times in this process \
         (c: {:.2} % of a)'s p50 PUT → event).",
        percent(c.0.p50, base_event),
        percent(c.1.p50, base_response),
        checks[2].as_secs_f64() / base_event.as_secs_f64() * 100.0
    );

    for s in subjects {
        s.probe.stop().await;
    }
    Ok(())
}

/// Access checks timed per mode.
const CHECKS: u32 = 100_000;

/// What the API does to let one of the measured PUTs through: the
/// `Authorization` header to a caller, and whether it may create the
/// policy; the mean time of `n` of them, in this process. Not the audit
/// entry a write also costs.
fn check_cost(s: &Subject, n: u32) -> anyhow::Result<Duration> {
    let access = &s.probe.running.access;
    let header = s
        .token
        .as_deref()
        .map(|t| ureq::http::HeaderValue::try_from(bearer(t)))
        .transpose()?;
    let target = Target::resource(ResourceType::MeshTimeout, Some(&s.probe.mesh), "p0");
    let start = Instant::now();
    for _ in 0..n {
        let caller = access
            .authenticate(header.as_ref())
            .map_err(|e| anyhow!("the access check refused the token: {}", e.details))?;
        if !access.can(&caller, Access::Create, &target) {
            bail!("the access check refused {} to create a MeshTimeout", caller.name);
        }
    }
    Ok(start.elapsed() / n)
}

/// Starts the server of `mode`, creates the meshes (and for mode c the
/// roles, the bindings and the user's token) and checks that access is
/// what the mode says.
async fn subject(mode: Mode, roles: usize, chosen: usize) -> anyhow::Result<Subject> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("data"))?);
    let mut access = AccessConfig::with_token_file(dir.path().join("admin-token"));
    access.unauthenticated = mode == Mode::Unauthenticated;
    let probe = ApiProbe::start(store, access).await?;
    let admin = probe.running.admin_token.clone();

    // The global creates the admin role and binding when it leads; every
    // mode is measured with them present (and a role may not be bound
    // before they exist).
    let binding = ResourceKey::global(
        ResourceType::AccessRoleBinding,
        meridian_core::access::DEFAULT_ADMIN_BINDING,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.running.manager.cache().get(&binding).is_none() {
        if Instant::now() > deadline {
            bail!("the global did not create the admin AccessRoleBinding within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for mesh in [probe.mesh.as_str(), ELSEWHERE] {
        probe
            .put_ok(Some(&admin), &format!("/meshes/{mesh}"), crate::kds::mesh_doc(mesh))
            .await?;
    }

    let token = match mode {
        Mode::Unauthenticated => {
            let (status, text) = probe
                .call(None, "PUT", &sanity_path(), Some(policy(ELSEWHERE, "sanity", 0)))
                .await?;
            if status != 201 {
                bail!("the unauthenticated baseline refused a PUT without a token: {status} {text}");
            }
            None
        }
        Mode::Admin => {
            let (status, text) = probe
                .call(None, "PUT", &sanity_path(), Some(policy(ELSEWHERE, "sanity", 0)))
                .await?;
            if status != 401 {
                bail!("a PUT without a token answered {status}, not 401: {text}");
            }
            Some(admin)
        }
        Mode::User => {
            let user = bind_roles(&probe, &admin, roles, chosen).await?;
            let (status, text) = probe
                .call(Some(&user), "PUT", &sanity_path(), Some(policy(ELSEWHERE, "sanity", 0)))
                .await?;
            if status != 403 {
                bail!("the user's PUT in a mesh no role of its allows answered {status}, not 403: {text}");
            }
            Some(user)
        }
    };
    Ok(Subject {
        mode,
        probe,
        token,
        next: 0,
        to_event: Vec::new(),
        to_response: Vec::new(),
        round_p50: Vec::new(),
        cpu: Duration::ZERO,
        _dir: dir,
    })
}

fn sanity_path() -> String {
    format!("/meshes/{ELSEWHERE}/meshtimeouts/sanity")
}

/// Creates `roles` AccessRoles, each allowing MeshTimeouts in one mesh,
/// and as many bindings, each of one user and one group to one role. Role
/// `chosen` allows the probe's mesh and binds group `team-{chosen}`;
/// returns a token of [`USER`] in that group.
async fn bind_roles(probe: &ApiProbe, admin: &str, roles: usize, chosen: usize) -> anyhow::Result<String> {
    for k in 0..roles {
        let mesh = if k == chosen {
            probe.mesh.clone()
        } else {
            format!("mesh-{k}")
        };
        let name = format!("role-{k}");
        let doc = json!({"type": "AccessRole", "name": name, "rules": [
            {"types": ["MeshTimeout"], "mesh": mesh, "access": ["CREATE", "UPDATE", "DELETE", "VIEW"]}]});
        probe.put_ok(Some(admin), &format!("/access-roles/{name}"), doc).await?;
    }
    for k in 0..roles {
        let name = format!("binding-{k}");
        let doc = json!({"type": "AccessRoleBinding", "name": name,
            "subjects": [{"type": "User", "name": format!("user-{k}")}, {"type": "Group", "name": format!("team-{k}")}],
            "roles": [format!("role-{k}")]});
        probe
            .put_ok(Some(admin), &format!("/access-role-bindings/{name}"), doc)
            .await?;
    }
    let (status, token) = probe
        .call(
            Some(admin),
            "POST",
            "/tokens/user",
            Some(json!({"name": USER, "groups": [format!("team-{chosen}")], "validFor": "24h"})),
        )
        .await?;
    if status != 200 {
        bail!("POST /tokens/user answered {status}: {token}");
    }
    Ok(token.trim().to_string())
}

// ---- failed authentications -------------------------------------------------------

/// The kinds of bad credentials, sent in turn.
const KINDS: [&str; 6] = [
    "no Authorization header",
    "Bearer + garbage",
    "malformed JWT (3 base64url parts of junk)",
    "JWT signed by a random Ed25519 key",
    "expired user token (of this global)",
    "wrong admin token",
];

/// A small deterministic generator for junk (splitmix64): the junk needs
/// to differ from request to request, not to be secret.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn b64(&mut self, n: usize) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.bytes(n))
    }
}

/// Signs claims into a token.
type Signer = Box<dyn Fn(&UserClaims) -> Result<String, serde_json::Error>>;

/// What the bad requests need.
struct BadCredentials {
    junk: Junk,
    /// Signs well-formed tokens with a key the global does not know.
    sign: Signer,
    /// A token the global issued, now expired.
    expired: String,
}

impl BadCredentials {
    /// The `Authorization` header of request `i` (kind `i % 6`), each one
    /// different from the others (but the expired token).
    fn header(&mut self, i: usize) -> anyhow::Result<Option<String>> {
        let now = chrono::Utc::now().timestamp();
        Ok(match i % KINDS.len() {
            0 => None,
            1 => Some(format!("Bearer {}-{i}", self.junk.b64(30))),
            2 => {
                let (a, b, c) = (self.junk.b64(24), self.junk.b64(60), self.junk.b64(64));
                Some(bearer(&format!("{a}.{b}.{c}")))
            }
            3 => {
                let claims = UserClaims {
                    iss: USER_TOKEN_ISSUER.into(),
                    sub: "mallory".into(),
                    groups: vec!["team-a".into()],
                    jti: format!("{:016x}-{i}", self.junk.next()),
                    iat: now,
                    exp: now + 3600,
                };
                Some(bearer(&(self.sign)(&claims)?))
            }
            4 => Some(bearer(&self.expired)),
            _ => Some(bearer(&format!(
                "{}{}",
                meridian_server::access::admin_token::ADMIN_TOKEN_PREFIX,
                self.junk.b64(32)
            ))),
        })
    }
}

pub async fn failed_auth(requests: usize) -> anyhow::Result<()> {
    if requests < 1000 {
        bail!("--failed-requests must be at least 1000");
    }
    let dir = tempfile::tempdir()?;
    let (process, _) = GlobalProcess::start(&dir.path().join("data"), "embedded", None)?;
    let pid = process.pid();
    let admin = agent();
    wait_ready(&admin, &process.api, Duration::from_secs(60)).await?;
    let api = process.api.clone();

    // A user token makes the global create its signing key `key-1`, so that
    // a token naming it is checked down to the signature.
    let issue = |name: &'static str, valid_for: &'static str| {
        let (admin, url) = (admin.clone(), format!("{api}/tokens/user"));
        async move {
            let (status, text) = http(
                &admin,
                "POST",
                url,
                Some(json!({"name": name, "groups": ["team-a"], "validFor": valid_for})),
            )
            .await?;
            if status != 200 {
                bail!("POST /tokens/user answered {status}: {text}");
            }
            anyhow::Ok(text.trim().to_string())
        }
    };
    issue("carol", "24h").await?;
    let expired = issue("dave", "1s").await?;
    // Accepted until one second and the clock skew allowance have passed.
    let plain = agent_without_tokens();
    let probe_url = format!("{api}/meshes");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = one(&plain, "GET", &probe_url, Some(bearer(&expired))).await?.0;
        if status == 401 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the token issued for 1 s is still accepted (status {status}) after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let key = jwt::load_key(&jwt::generate_key()?)?;
    let mut bad = BadCredentials {
        junk: Junk(crate::kds::unique() as u64),
        // Naming `key-1`, the global's key: the signature is checked.
        sign: Box::new(move |claims| jwt::sign(&key, "key-1", claims)),
        expired,
    };

    let (_, before) = peak_rss_kib(pid)?;
    let cpu_before = cpu_time_of(&pid.to_string());
    let mut rss = vec![(0usize, before)];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); KINDS.len()];
    let mut retried = Vec::new();
    let mut sent = 0;
    for upto in [1000, requests, 2 * requests] {
        if upto <= sent {
            continue;
        }
        let headers: Vec<Option<String>> = (sent..upto).map(|i| bad.header(i)).collect::<anyhow::Result<_>>()?;
        let (plain, api, first) = (plain.clone(), api.clone(), sent);
        let step = tokio::task::spawn_blocking(move || bad_requests(&plain, &api, first, headers)).await??;
        for (kind, t) in step.times {
            times[kind].push(t);
        }
        retried.extend(step.again);
        sent = upto;
        rss.push((sent, peak_rss_kib(pid)?.1));
    }
    let cpu = cpu_time_of(&pid.to_string()).saturating_sub(cpu_before);
    let (hwm, _) = peak_rss_kib(pid)?;

    println!(
        "failed authentications: a meridian-global process (embedded store), {} requests with bad credentials in a row, \
         kinds in turn, GET /meshes and PUT of a MeshTimeout in turn; every answer was 401\n",
        2 * requests
    );
    println!("| {:<30} | {:>12} | {:>16} |", "after", "VmRSS", "growth");
    println!("|{}|{}|{}|", "-".repeat(32), "-".repeat(14), "-".repeat(18));
    for (n, kib) in &rss {
        let label = if *n == 0 {
            "start (tokens issued)".to_string()
        } else {
            format!("{n} requests")
        };
        println!(
            "| {label:<30} | {:>8} KiB | {:>+12} KiB |",
            kib,
            *kib as i64 - before as i64
        );
    }
    println!("| {:<30} | {:>8} KiB | {:>16} |", "peak (VmHWM)", hwm, "");
    let last_step = rss[rss.len() - 1].1 as i64 - rss[rss.len() - 2].1 as i64;
    println!(
        "\nthe last {requests} requests: {last_step:+} KiB; the global's CPU per 401: {:.1} µs (/proc/{pid}/stat, 10 ms ticks)\n",
        cpu.as_secs_f64() * 1e6 / (2 * requests) as f64
    );
    println!("time of a 401, client side (ms):\n");
    header("credentials");
    let mut all = Vec::new();
    for (kind, t) in KINDS.iter().zip(times) {
        all.extend(t.iter().copied());
        row(kind, &summarize(t));
    }
    row("all", &summarize(all));
    println!(
        "\nrequests sent again because the connection had been closed: {}{}",
        retried.len(),
        retried
            .first()
            .map(|e| format!(" (the first: {e})"))
            .unwrap_or_default()
    );

    // What the global counted.
    let (status, metrics) = http(&admin, "GET", format!("{api}/metrics"), None).await?;
    if status != 200 {
        bail!("GET /metrics answered {status}: {metrics}");
    }
    println!("\nthe global's counters:\n");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("meridian_api_authentication_failures"))
    {
        println!("    {line}");
    }
    drop(process);
    Ok(())
}

/// What one step of bad requests saw.
struct Step {
    /// The kind of each request and the time to its 401.
    times: Vec<(usize, Duration)>,
    /// Requests sent a second time, and why the first failed.
    again: Vec<String>,
}

/// Sends request `first + k` with `headers[k]`, one after the other, each
/// a GET or a PUT; fails unless each is answered 401.
fn bad_requests(agent: &ureq::Agent, api: &str, first: usize, headers: Vec<Option<String>>) -> anyhow::Result<Step> {
    let mut step = Step {
        times: Vec::with_capacity(headers.len()),
        again: Vec::new(),
    };
    for (k, auth) in headers.into_iter().enumerate() {
        let i = first + k;
        let kind = i % KINDS.len();
        // GET and PUT in turn, each kind with both.
        let put = (i / KINDS.len()) % 2 == 1;
        let what = || format!("request {i} ({}, {})", KINDS[kind], if put { "PUT" } else { "GET" });
        let attempt = || {
            if put {
                let name = format!("p{i}");
                let url = format!("{api}/meshes/bench/meshtimeouts/{name}");
                send(agent, "PUT", &url, auth.clone(), Some(policy("bench", &name, i)))
            } else {
                send(agent, "GET", &format!("{api}/meshes"), auth.clone(), None)
            }
        };
        let start = Instant::now();
        let (status, text) = match attempt() {
            Ok(answer) => answer,
            // The server may close the connection of a PUT it answers 401
            // before the body has arrived (it does not wait to drain it);
            // the client then loses the answer, or the next request over
            // the connection fails. Sent again on a new connection,
            // counted, and timed from the first attempt.
            Err(e) => {
                step.again.push(format!("{}: {e:#}", what()));
                attempt().with_context(what)?
            }
        };
        let t = start.elapsed();
        if status != 401 {
            bail!("{} answered {status}, not 401: {text}", what());
        }
        step.times.push((kind, t));
    }
    Ok(step)
}

/// One request with `auth` as the `Authorization` header (none: no header).
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    auth: Option<String>,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)> {
    let mut resp = match (method, body) {
        ("PUT", Some(b)) => match auth {
            Some(a) => agent.put(url).header("Authorization", a).send_json(&b)?,
            None => agent.put(url).send_json(&b)?,
        },
        ("GET", None) => match auth {
            Some(a) => agent.get(url).header("Authorization", a).call()?,
            None => agent.get(url).call()?,
        },
        _ => return Err(anyhow!("unsupported request {method} {url}")),
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().context("reading the answer")?;
    Ok((status, text))
}

/// [`send`] on a blocking thread.
async fn one(
    agent: &ureq::Agent,
    method: &'static str,
    url: &str,
    auth: Option<String>,
) -> anyhow::Result<(u16, String)> {
    let (agent, url) = (agent.clone(), url.to_string());
    tokio::task::spawn_blocking(move || send(&agent, method, &url, auth, None)).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three modes at a smoke size, each checked to be what it says.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn access_benchmark_runs_in_a_smoke_size() {
        access(AccessOptions {
            count: 30,
            rounds: 3,
            warmup: 5,
            roles: 10,
        })
        .await
        .unwrap();
    }

    /// Against the binary beside the test; every bad request answered 401.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_auth_benchmark_runs_in_a_smoke_size() {
        failed_auth(1000).await.unwrap();
    }
}
