//! A small HTTP client for the edge, reading each answer whole.

use std::time::Duration;

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
                .expect("an HTTP client"),
        }
    }

    /// The same edge, every request carrying `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Http {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .expect("a token fit for a header"),
        );
        Http {
            base: self.base.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()
                .expect("an HTTP client"),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        self.try_send(request).await.expect("the edge answers")
    }

    /// [`send`](Self::send), with a failed exchange (a connection closed under the
    /// request, say) as an error rather than a panic: the caller does not know whether
    /// it was applied, and may retry it.
    pub async fn try_send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, reqwest::Error> {
        let response = request.send().await?;
        Ok(Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await?,
        })
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
        let reply = self
            .post("/users", &crate::fixtures::user_body(email))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.json()["user"]["userId"]
            .as_str()
            .expect("a user id")
            .to_owned()
    }

    /// An order of the sample body for `user`; its id.
    pub async fn create_order(&self, user: &str, email: &str) -> String {
        let reply = self
            .post("/orders", &crate::fixtures::order_body(user, email))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.json()["order"]["orderId"]
            .as_str()
            .expect("an order id")
            .to_owned()
    }
}
