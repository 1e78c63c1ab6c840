//! Operations: metrics as scraped from a running relay.

mod common;

use common::{http_get, http_request, start_with};

/// The server API key the tests configure.
const API_KEY: &str = "ops-test-api-key-0123";

/// A sample's value in a Prometheus text page (the first line starting with `series `).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn server_api_duplicate_publishes_are_counted() {
    let relay = start_with(|config| config.api.key = Some(API_KEY.into())).await;
    let tcp = relay.relay.tcp_addr();
    let duplicates = || async {
        let (_, page) = http_get(tcp, "/metrics").await;
        sample(&page, "edgerelay_duplicate_publishes_total").unwrap_or(0.0)
    };
    let before = duplicates().await;
    let auth = format!("Bearer {API_KEY}");
    let body = r#"{"tenant": "acme", "room": "news", "id": "srv-dup", "data": 1}"#;
    let mut answers = Vec::new();
    for _ in 0..2 {
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let (status, answer) = http_request(tcp, "POST", "/v1/api/publish", &headers, body).await;
        assert_eq!(status, 200, "{answer}");
        answers.push(serde_json::from_str::<serde_json::Value>(&answer).unwrap());
    }
    assert_eq!(answers[0]["duplicate"], false);
    assert_eq!(answers[1]["duplicate"], true);
    assert_eq!(answers[0]["position"], answers[1]["position"]);
    assert_eq!(duplicates().await - before, 1.0);
    relay.relay.shutdown().await;
}
