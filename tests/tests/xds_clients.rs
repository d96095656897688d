#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real-client harness itself: the Python (grpcio) and Node
//! (@grpc/grpc-js-xds) clients against the grpcio test server without xDS,
//! failure and delay injection as a retrying / deadline-bound client sees it,
//! the Envoy validator on resources encoded in Rust, and an xDS client whose
//! ADS server is not there failing within a bounded time.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion, ConfigSource};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use meridian_e2e::free_port;
use meridian_e2e::xds_clients::{
    bootstrap_json, run_client, try_run_client, validate_envoy, validate_envoy_self_test, ClientKind, TestServer,
    WatchClient,
};
use prost::Message;

const TYPE_PREFIX: &str = "type.googleapis.com/";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// Client-side retries (a service config, no xDS): 3 attempts on UNAVAILABLE.
const RETRY_CONFIG: &str = r#"{"methodConfig": [{"name": [{"service": "meridian.test.Echo"}],
  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
  "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;

const ROUND_ROBIN: &str = r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#;

#[test]
fn clients_reach_a_server_directly_and_count_identities() {
    let server = TestServer::start("zone-1/backend-v1", &[]);
    for kind in ClientKind::ALL {
        let r = run_client(kind, &server.addr(), 50, &[], None);
        assert_eq!(r.total, 50, "{kind:?}: {:?}", r.raw);
        assert_eq!(r.ok_from("zone-1/backend-v1"), 50, "{kind:?}: {:?}", r.raw);
        assert!(r.errors.is_empty(), "{kind:?}: {:?}", r.raw);
        assert_eq!(r.attempts.get(&1), Some(&50), "{kind:?}: {:?}", r.raw);
    }
}

#[test]
fn clients_count_each_of_two_servers_with_round_robin() {
    let v1 = TestServer::start("zone-1/backend-v1", &[]);
    let v2 = TestServer::start("zone-1/backend-v2", &[]);
    let target = format!("ipv4:127.0.0.1:{},127.0.0.1:{}", v1.port, v2.port);
    for kind in ClientKind::ALL {
        let r = run_client(kind, &target, 40, &["--service-config", ROUND_ROBIN], None);
        assert_eq!(r.total, 40, "{kind:?}: {:?}", r.raw);
        assert_eq!(r.ok_total(), 40, "{kind:?}: {:?}", r.raw);
        // Round robin over two ready backends alternates; allow for the first
        // calls landing before the second connection is up.
        for name in ["zone-1/backend-v1", "zone-1/backend-v2"] {
            assert!(r.ok_from(name) >= 10, "{kind:?}: {name} got too few: {:?}", r.raw);
        }
    }
}

#[test]
fn fail_first_fails_plain_clients_and_lets_retrying_clients_through() {
    let server = TestServer::start("zone-1/flaky", &["--fail-first", "1"]);
    for kind in ClientKind::ALL {
        let plain = run_client(kind, &server.addr(), 20, &[], None);
        assert_eq!(plain.errors_of("UNAVAILABLE"), 20, "{kind:?}: {:?}", plain.raw);
        assert_eq!(plain.ok_total(), 0, "{kind:?}: {:?}", plain.raw);
        assert!(
            plain.error_samples["UNAVAILABLE"].contains("injected failure"),
            "{kind:?}: {:?}",
            plain.raw
        );

        // Same request ids again: this server has seen attempt 1 of each, so a
        // second plain call of the same id succeeds at attempt 2.
        let prefix = format!("again-{kind:?}-");
        let first = run_client(kind, &server.addr(), 5, &["--request-id-prefix", &prefix], None);
        assert_eq!(first.errors_of("UNAVAILABLE"), 5, "{kind:?}: {:?}", first.raw);
        let second = run_client(kind, &server.addr(), 5, &["--request-id-prefix", &prefix], None);
        assert_eq!(second.ok_total(), 5, "{kind:?}: {:?}", second.raw);
        assert_eq!(second.attempts.get(&2), Some(&5), "{kind:?}: {:?}", second.raw);

        // A retrying client (gRPC's own retries, metadata kept) gets through.
        let retrying = run_client(kind, &server.addr(), 20, &["--service-config", RETRY_CONFIG], None);
        assert_eq!(retrying.ok_from("zone-1/flaky"), 20, "{kind:?}: {:?}", retrying.raw);
        assert_eq!(retrying.attempts.get(&2), Some(&20), "{kind:?}: {:?}", retrying.raw);
    }
}

#[test]
fn delay_beyond_the_deadline_is_deadline_exceeded() {
    let server = TestServer::start("zone-1/slow", &["--delay-ms", "400"]);
    for kind in ClientKind::ALL {
        let short = run_client(kind, &server.addr(), 4, &["--deadline-ms", "100"], None);
        assert_eq!(short.errors_of("DEADLINE_EXCEEDED"), 4, "{kind:?}: {:?}", short.raw);
        let long = run_client(kind, &server.addr(), 2, &["--deadline-ms", "5000"], None);
        assert_eq!(long.ok_from("zone-1/slow"), 2, "{kind:?}: {:?}", long.raw);
    }
}

#[test]
fn watch_mode_reports_per_second_and_sees_a_server_go_away() {
    for kind in ClientKind::ALL {
        let mut server = TestServer::start("zone-1/backend-v1", &[]);
        let mut watch = WatchClient::start(
            kind,
            &server.addr(),
            30,
            &["--interval-ms", "20", "--deadline-ms", "500"],
            None,
        );
        let up = watch.wait_for_window("calls answered", Duration::from_secs(15), |w| {
            w.ok_from("zone-1/backend-v1") > 0
        });
        assert!(up.t.is_some(), "{kind:?}: {:?}", up.raw);
        server.kill();
        let down = watch.wait_for_window("calls failing after the server died", Duration::from_secs(15), |w| {
            w.total > 0 && w.ok_total() == 0
        });
        assert!(down.errors_of("UNAVAILABLE") > 0, "{kind:?}: {:?}", down.raw);
    }
}

#[test]
fn xds_client_without_an_ads_server_fails_clearly_and_in_bounded_time() {
    let closed = free_port(); // nothing listens here
    let bootstrap = bootstrap_json("default.client-1", closed);
    for kind in ClientKind::ALL {
        let started = std::time::Instant::now();
        let failure = try_run_client(
            kind,
            "xds:///backend",
            3,
            &["--ready-timeout-ms", "3000", "--deadline-ms", "1000"],
            Some(&bootstrap),
            Duration::from_secs(60),
        )
        .expect_err("no ADS server: the client must fail");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{kind:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(failure.status.and_then(|s| s.code()), Some(3), "{kind:?}: {failure}");
        assert!(
            failure.stderr.contains(&format!("127.0.0.1:{closed}")) && failure.stderr.contains("not ready"),
            "{kind:?}: the message names the ADS server: {failure}"
        );
    }
    // No bootstrap at all: a setup error that says what to set.
    for kind in ClientKind::ALL {
        let failure = try_run_client(kind, "xds:///backend", 1, &[], None, Duration::from_secs(30))
            .expect_err("no bootstrap: the client must fail");
        assert_eq!(failure.status.and_then(|s| s.code()), Some(2), "{kind:?}: {failure}");
        assert!(
            failure.stderr.contains("GRPC_XDS_BOOTSTRAP_CONFIG"),
            "{kind:?}: {failure}"
        );
    }
}

#[test]
fn validate_envoy_self_test_passes() {
    validate_envoy_self_test().unwrap();
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn eds_cluster(name: &str, connect_timeout: Option<PbDuration>) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

fn any<M: Message>(type_name: &str, m: &M) -> Any {
    Any {
        type_url: format!("{TYPE_PREFIX}{type_name}"),
        value: m.encode_to_vec(),
    }
}

/// A proxyless-gRPC Listener: api_listener with an HttpConnectionManager
/// (RDS over ADS, router filter) packed in an Any.
fn api_listener(name: &str, stat_prefix: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_string(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(ConfigType::TypedConfig(any(
                "envoy.extensions.filters.http.router.v3.Router",
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                &hcm,
            )),
        }),
        ..Default::default()
    }
}

#[test]
fn validate_envoy_judges_resources_encoded_in_rust() {
    let five_s = Some(PbDuration { seconds: 5, nanos: 0 });
    let valid = [
        (CLUSTER, eds_cluster("backend", five_s).encode_to_vec()),
        (LISTENER, api_listener("backend", "backend").encode_to_vec()),
    ];
    validate_envoy(&valid).unwrap();

    // PGV: Cluster.name min_len 1, connect_timeout gt 0s.
    let zero = Some(PbDuration::default());
    let err = validate_envoy(&[(CLUSTER, eds_cluster("", zero).encode_to_vec())]).unwrap_err();
    assert!(err.contains(r#""path": "name""#), "{err}");
    assert!(err.contains(r#""path": "connect_timeout""#), "{err}");

    let negative = Some(PbDuration { seconds: -1, nanos: 0 });
    let err = validate_envoy(&[(CLUSTER, eds_cluster("backend", negative).encode_to_vec())]).unwrap_err();
    assert!(err.contains(r#""path": "connect_timeout""#), "{err}");

    // The violation is inside the api_listener's Any: only unpacking finds it.
    let err = validate_envoy(&[
        (CLUSTER, eds_cluster("backend", five_s).encode_to_vec()),
        (LISTENER, api_listener("backend", "").encode_to_vec()),
    ])
    .unwrap_err();
    assert!(
        err.contains("api_listener.api_listener<envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager>.stat_prefix"),
        "{err}"
    );
    assert!(
        err.contains(r#""resource": 1"#) && !err.contains(r#""resource": 0"#),
        "{err}"
    );

    // Bytes that are no Cluster.
    let err = validate_envoy(&[(CLUSTER, vec![0xff, 0xff, 0xff])]).unwrap_err();
    assert!(err.contains("cannot decode"), "{err}");
}
