//! The socket is explorable by generic gRPC tools: server reflection lists our services,
//! the standard health service answers.
mod common;

use common::*;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn reflection_lists_the_api_and_health_is_serving() {
    let env = TestEnv::new();
    env.status();
    let channel = qwend_shared::transport::connect(&env.socket).await.unwrap();

    let mut refl = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"qwend.v1.Daemon".to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let mut health = HealthClient::new(channel);
    for service in ["", "qwend.v1.Daemon"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn a_client_holding_a_connection_does_not_block_shutdown_forever() {
    let env = TestEnv::new();
    let pid = env.daemon_pid();
    // An idle connection that this test never closes and whose runtime cannot answer the
    // server's GOAWAY while the stop command blocks this thread.
    let _held = qwend_shared::transport::connect(&env.socket).await.unwrap();
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!env.socket.exists());
    while alive(pid) {
        std::thread::yield_now();
    }
}
