//! The REST contract as a committed file: any change to routes, shapes or errors shows up
//! as a diff of edge/openapi.json in review. After an intended change, refresh it with
//!   UPDATE_SNAPSHOTS=1 cargo test -p edge --test openapi

#[test]
fn the_openapi_document_matches_its_snapshot() {
    let doc = edge::Edge::openapi();
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == text,
        "the REST contract changed; review the difference and refresh {path} with \
         UPDATE_SNAPSHOTS=1 cargo test -p edge --test openapi"
    );
}

#[test]
fn every_route_of_the_contract_is_documented() {
    let doc = serde_json::to_value(edge::Edge::openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let operations = [
        ("/users", "post"),
        ("/users/{userId}", "get"),
        ("/users/{userId}", "put"),
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{orderId}", "get"),
        ("/orders/{orderId}/status", "put"),
        ("/orders/{orderId}/details", "put"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/admin/routing", "get"),
        ("/admin/routing", "put"),
        ("/admin/shadow", "get"),
        ("/admin/shadow", "put"),
        ("/admin/rollout", "get"),
        ("/admin/rollout", "put"),
        ("/admin/rollout/pause", "post"),
        ("/admin/rollout/resume", "post"),
        ("/admin/rollout/abort", "post"),
        ("/admin/rollout/promote", "post"),
        ("/admin/stats", "get"),
    ];
    for (path, method) in operations {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        if !matches!(path, "/health" | "/metrics") {
            for status in ["400", "404", "413", "415", "500", "503", "504"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} lacks {status}"
                );
            }
        }
    }
}
