//! What tandem's end-to-end tests share: services started in-process on port 0, real
//! binaries started as child processes, and polling with a deadline instead of sleeping.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem::proto::order::v1::order_service_client::OrderServiceClient;
use tandem::proto::user::v1::user_service_client::UserServiceClient;
use tandem_storage::StoreUrl;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub mod sync;

pub use tandem::proto::common::v1::Address as PbAddress;
pub use tandem_testkit::{Proc, bin, eventually, free_port, wait_serving};

pub fn address(street: &str) -> PbAddress {
    PbAddress {
        street: street.into(),
        city: "Ottawa".into(),
        province: "ON".into(),
        postal_code: "K2P 1L4".into(),
        country: "Canada".into(),
    }
}

/// A unique email, so tests sharing a store never clash by accident.
pub fn unique_email(tag: &str) -> String {
    format!("{tag}.{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Cancels a server's shutdown token when dropped, so every test cleans up after itself.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn local_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

pub async fn start_user_svc(flavor: user_svc::Flavor, db: &Path) -> Running {
    let config = user_svc::Config {
        flavor,
        store: StoreUrl::Sqlite(db.to_path_buf()),
        relay: None,
    };
    let svc = user_svc::UserSvc::open(config).await.unwrap();
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { svc.serve(listener, None, token).await.unwrap() });
    Running {
        addr,
        shutdown,
        task: Some(task),
    }
}

pub async fn start_order_svc(db: &Path) -> Running {
    let svc = order_svc::OrderSvc::open(order_svc::Config {
        store: StoreUrl::Sqlite(db.to_path_buf()),
    })
    .await
    .unwrap();
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { svc.serve(listener, None, token).await.unwrap() });
    Running {
        addr,
        shutdown,
        task: Some(task),
    }
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn user_client(server: &Running) -> UserServiceClient<Channel> {
    UserServiceClient::new(channel(&server.url()).await)
}

pub async fn order_client(server: &Running) -> OrderServiceClient<Channel> {
    OrderServiceClient::new(channel(&server.url()).await)
}

/// The fields a status names in its google.rpc.BadRequest details.
pub fn fields(status: &tonic::Status) -> Vec<String> {
    tandem_serving::grpc::field_violations(status)
        .into_iter()
        .map(|v| v.field)
        .collect()
}

// === the edge over in-process services ===

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// user-svc v1 and v2 on one SQLite file, order-svc, and an edge in front, all in this
/// process on port 0.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub user_v1: Option<Running>,
    pub user_v2: Option<Running>,
    pub orders: Option<Running>,
    pub edge: Running,
    pub http: Http,
}

#[derive(Clone)]
pub struct EdgeOptions {
    pub p: Option<u8>,
    pub admin_token: Option<&'static str>,
    pub upstream_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            p: None,
            admin_token: Some(ADMIN_TOKEN),
            upstream_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl Stack {
    pub async fn start(options: EdgeOptions) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let user_db = dir.path().join("user_db.sqlite");
        let user_v1 = start_user_svc(user_svc::Flavor::V1, &user_db).await;
        let user_v2 = start_user_svc(user_svc::Flavor::V2, &user_db).await;
        let orders = start_order_svc(&dir.path().join("order_db.sqlite")).await;
        let routing_file = dir.path().join("routing.json");
        if let Some(p) = options.p {
            std::fs::write(&routing_file, format!(r#"{{"P": {p}}}"#)).unwrap();
        }
        let config = edge::Config {
            upstreams: edge::UpstreamConfig {
                user_v1: user_v1.url(),
                user_v2: user_v2.url(),
                orders: orders.url(),
                timeout: options.upstream_timeout,
            },
            routing_file,
            routing_poll: Duration::from_millis(50),
            admin_token: options
                .admin_token
                .and_then(|t| edge::AdminToken::new(t.to_owned())),
            request_timeout: options.request_timeout,
        };
        let edge = start_edge(config).await;
        let http = Http::new(&format!("http://{}", edge.addr));
        Stack {
            dir,
            user_v1: Some(user_v1),
            user_v2: Some(user_v2),
            orders: Some(orders),
            edge,
            http,
        }
    }

    pub fn routing_file(&self) -> PathBuf {
        self.dir.path().join("routing.json")
    }

    pub fn user_db(&self) -> PathBuf {
        self.dir.path().join("user_db.sqlite")
    }
}

pub async fn start_edge(config: edge::Config) -> Running {
    let edge = edge::Edge::new(config).unwrap();
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { edge.serve(listener, token).await.unwrap() });
    Running {
        addr,
        shutdown,
        task: Some(task),
    }
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn served_by(&self) -> &str {
        self.header("x-served-by").unwrap_or("")
    }

    /// The `field`s of an error body.
    pub fn fields(&self) -> Vec<String> {
        self.json()["fields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|f| f["field"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct Http {
    pub base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.unwrap();
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.unwrap(),
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Reply {
        self.send(
            self.request(method, path)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.json(reqwest::Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.json(reqwest::Method::PUT, path, body).await
    }

    /// Creates a user through the edge and returns its id.
    pub async fn create_user(&self, email: &str) -> String {
        let reply = self.post("/users", &user_body(email)).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.json()["user"]["userId"].as_str().unwrap().to_owned()
    }
}

pub fn address_json(street: &str) -> serde_json::Value {
    serde_json::json!({
        "street": street,
        "city": "Ottawa",
        "province": "ON",
        "postalCode": "K2P 1L4",
        "country": "Canada"
    })
}

pub fn user_body(email: &str) -> serde_json::Value {
    serde_json::json!({
        "firstName": "Robert",
        "lastName": "Williams",
        "phoneNumber": "+1-438-222-7890",
        "emails": [email],
        "deliveryAddress": address_json("456 Elm Avenue"),
    })
}

pub fn order_body(user_id: &str, email: &str) -> serde_json::Value {
    serde_json::json!({
        "userId": user_id,
        "items": [
            {"itemId": "Study table", "quantity": 1, "price": 29.99},
            {"itemId": "Chair", "quantity": 2, "price": 15.990}
        ],
        "emails": [email],
        "deliveryAddress": address_json("456 Elm Avenue"),
        "orderStatus": "under process"
    })
}
