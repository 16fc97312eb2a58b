//! Every REST route under load from wrk (a load generator nobody here wrote), at several
//! concurrency levels: throughput and p50/p99/p99.9 latency.

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stack::Stack;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteRun {
    pub route: String,
    pub connections: usize,
    pub requests: u64,
    pub throughput: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The first answer that was not a success, if any (status and start of the body).
    pub first_failure: Option<String>,
    /// CPU µs per request of each process over the run, RabbitMQ included (wrk, the load
    /// generator, not counted): where a write's cost goes, beside a read's.
    #[serde(default)]
    pub cpu_us: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Routes {
    pub seconds: f64,
    pub runs: Vec<RouteRun>,
}

impl Routes {
    /// The connection counts run, in order.
    pub fn levels(&self) -> Vec<usize> {
        let mut levels: Vec<usize> = self.runs.iter().map(|r| r.connections).collect();
        levels.sort_unstable();
        levels.dedup();
        levels
    }

    fn throughput(&self, route: &str, connections: usize) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.route == route && r.connections == connections)
            .map(|r| r.throughput)
    }

    /// `route`'s throughput over GET /users/{id}'s at the same connection count.
    pub fn ratio_to_get(&self, route: &str, connections: usize) -> Option<f64> {
        let get = self.throughput("GET /users/{id}", connections)?;
        Some(self.throughput(route, connections)? / get).filter(|_| get > 0.0)
    }

    /// The most PUT /users/{id} took at 16 or more connections: the write path's
    /// capacity in this run.
    pub fn put_capacity(&self) -> Option<f64> {
        self.runs
            .iter()
            .filter(|r| r.route == "PUT /users/{id}" && r.connections >= 16)
            .map(|r| r.throughput)
            .reduce(f64::max)
    }
}

/// wrk's `done` hook prints one JSON line with what we need (wrk's own summary lacks
/// p99.9 and separates nothing).
const DONE: &str = r#"
response = function(status, headers, body)
  if status >= 300 and first_error == nil then
    first_error = tostring(status) .. " " .. string.sub(body or "", 1, 200)
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  local sample = ""
  for _, thread in ipairs(threads) do
    local err = thread:get("first_error")
    if err and sample == "" then sample = err end
  end
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
  io.write("SAMPLE " .. sample .. "\n")
end
"#;

/// A wrk script that sends `method path` with `body`; `{n}` in either becomes a token
/// unique to the request, `{id}` one of `ids` in turn.
///
/// wrk never seeds Lua's `math.random`, so every run repeats the same sequence: the token
/// starts with a nonce unique to this script, or a second run would reuse the first run's
/// emails and measure 409s.
pub(crate) fn script(method: &str, path: &str, body: &str, ids: &[String]) -> String {
    let ids_lua: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!(
        r#"
local ids = {{{ids}}}
local nonce = "{nonce}"
local thread_no = 0
threads = {{}}
setup = function(thread)
  thread:set("tid", thread_no)
  thread_no = thread_no + 1
  table.insert(threads, thread)
end
local n = 0
request = function()
  n = n + 1
  local unique = nonce .. "x" .. tostring(tid or 0) .. "x" .. tostring(n)
  local id = ids[(n % #ids) + 1] or ""
  local p = string.gsub(string.gsub({path:?}, "{{n}}", unique), "{{id}}", id)
  local b = string.gsub(string.gsub({body:?}, "{{n}}", unique), "{{id}}", id)
  local headers = {{}}
  if b ~= "" then headers["Content-Type"] = "application/json" end
  return wrk.format({method:?}, p, headers, b ~= "" and b or nil)
end
{DONE}"#,
        ids = ids_lua.join(","),
    )
}

pub(crate) fn address() -> &'static str {
    r#"{"street":"456 Elm Avenue","city":"Ottawa","province":"ON","postalCode":"K2P 1L4","country":"Canada"}"#
}

pub(crate) fn run_wrk(
    base: &str,
    script_text: &str,
    connections: usize,
    duration: Duration,
    dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    let path = dir.join("route.lua");
    std::fs::write(&path, script_text)?;
    let output = Command::new("wrk")
        .args([
            &format!("-t{}", connections.clamp(1, 2)),
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs()),
        ])
        .args(["--timeout", "10s", "-s"])
        .arg(&path)
        .arg(base)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk ({e}); apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "wrk printed no result: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let mut result: serde_json::Value = serde_json::from_str(line)?;
    // The first failure is on a line of its own: a response body is not safe to splice
    // into the JSON line from Lua.
    if let Some(sample) = text.lines().find_map(|l| l.strip_prefix("SAMPLE ")) {
        result["sample"] = serde_json::Value::String(sample.to_owned());
    }
    Ok(result)
}

pub async fn run(levels: &[usize], duration: Duration) -> anyhow::Result<Routes> {
    let stack = Stack::start(crate::stack::Options {
        sync: true,
        ..crate::stack::Options::new(50)
    })
    .await?;
    let http = reqwest::Client::new();
    // Users and orders the routes work on.
    let mut users = Vec::new();
    let mut orders = Vec::new();
    for i in 0..50 {
        let email = format!("route{i}.{}@bench.example", uuid::Uuid::new_v4().simple());
        let user: serde_json::Value = http
            .post(format!("{}/users", stack.edge))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"emails":["{email}"],"deliveryAddress":{}}}"#,
                address()
            ))
            .send()
            .await?
            .json()
            .await?;
        let user_id = user["user"]["userId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let order: serde_json::Value = http
            .post(format!("{}/orders", stack.edge))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"userId":"{user_id}","items":[{{"itemId":"thing","quantity":1,"price":9.99}}],"emails":["{email}"],"deliveryAddress":{}}}"#,
                address()
            ))
            .send()
            .await?
            .json()
            .await?;
        orders.push(
            order["order"]["orderId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        users.push(user_id);
    }
    let a = address();
    let cases: Vec<(&str, &str, &str, String, &Vec<String>)> = vec![
        (
            "POST /users",
            "POST",
            "/users",
            format!(r#"{{"emails":["b{{n}}@bench.example"],"deliveryAddress":{a}}}"#),
            &users,
        ),
        (
            "GET /users/{id}",
            "GET",
            "/users/{id}",
            String::new(),
            &users,
        ),
        (
            "PUT /users/{id}",
            "PUT",
            "/users/{id}",
            r#"{"emails":["p{n}@bench.example"]}"#.to_owned(),
            &users,
        ),
        (
            "POST /orders",
            "POST",
            "/orders",
            format!(
                r#"{{"userId":"{{id}}","items":[{{"itemId":"thing","quantity":2,"price":29.99}}],"emails":["o@bench.example"],"deliveryAddress":{a}}}"#
            ),
            &users,
        ),
        (
            "GET /orders?userId=",
            "GET",
            "/orders?userId={id}&limit=10",
            String::new(),
            &users,
        ),
        (
            "GET /orders/{id}",
            "GET",
            "/orders/{id}",
            String::new(),
            &orders,
        ),
        (
            "PUT /orders/{id}/status",
            "PUT",
            "/orders/{id}/status",
            r#"{"orderStatus":"under process"}"#.to_owned(),
            &orders,
        ),
        (
            "PUT /orders/{id}/details",
            "PUT",
            "/orders/{id}/details",
            r#"{"emails":["d{n}@bench.example"]}"#.to_owned(),
            &orders,
        ),
    ];
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for (route, method, path, body, ids) in &cases {
        for &connections in levels {
            eprintln!("routes: {route} with {connections} connections");
            let text = script(method, path, body, ids);
            let cpu_before = crate::r2::with_rabbitmq(stack.cpu_seconds());
            let r = run_wrk(&stack.edge, &text, connections, duration, dir.path())?;
            let cpu_after = crate::r2::with_rabbitmq(stack.cpu_seconds());
            let us = |k: &str| r[k].as_f64().unwrap_or(0.0);
            let requests = us("requests") as u64;
            let cpu_us = crate::stack::cpu_us_per_request(&cpu_before, &cpu_after, requests);
            runs.push(RouteRun {
                route: (*route).to_owned(),
                connections,
                requests,
                throughput: requests as f64 / (us("duration_us") / 1e6),
                non_2xx: us("non2xx") as u64,
                socket_errors: us("socket_errors") as u64,
                p50_ms: us("p50") / 1000.0,
                p99_ms: us("p99") / 1000.0,
                p999_ms: us("p999") / 1000.0,
                first_failure: r["sample"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                cpu_us,
            });
        }
    }
    Ok(Routes {
        seconds: duration.as_secs_f64(),
        runs,
    })
}
