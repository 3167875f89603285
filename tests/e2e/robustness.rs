//! Bad input does not hurt a node.

use crate::cluster::{check_all, put_all, runtime, stdout, TestCluster};
use cohort_net::api::proto::{self, cohort_client::CohortClient};
use std::io::Write;
use std::time::Duration;

#[test]
fn garbage_on_the_peer_port_and_bad_paths_leave_the_node_serving() {
    let cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "ok.git"]));
    for id in 1..=3 {
        let address = cluster.node(id).peer_address.clone();
        for garbage in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0xff; 4096][..],
            &u32::MAX.to_le_bytes()[..],
            &[5, 0, 0, 0, 9, 9, 9, 9, 9][..],
        ] {
            if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
                let _ = stream.write_all(garbage);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Straight to the API, past the CLI's own checks: the node must refuse them itself.
    let rt = runtime();
    let long = "x".repeat(5000);
    for bad in ["../escape.git", "/abs.git", "a//b.git", "nul\u{0}.git", long.as_str()] {
        let code = rt.block_on(async {
            let mut client = CohortClient::connect(cluster.endpoint(1)).await.unwrap();
            let request = proto::CreateRepositoryRequest {
                repo: Some(proto::Repo { storage: "default".into(), relative_path: bad.into() }),
                id: Some(proto::WriteId { client_id: 5, sequence: 1 }),
                fork_of: None,
            };
            client.create_repository(request).await.unwrap_err().code()
        });
        assert_eq!(code, tonic::Code::InvalidArgument, "{bad:?} is refused as invalid");
    }
    let out = cluster.cli(&["repo", "create", "../escape.git"]);
    assert!(!out.status.success(), "the CLI refuses it too");
    // Every node still serves and the cluster still writes.
    stdout(&cluster.cli(&["repo", "create", "still-ok.git"]));
    let status = cluster.status();
    assert!(status["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true), "{status}");
}

#[test]
fn sigterm_stops_a_node_cleanly() {
    let mut cluster = TestCluster::start(1);
    stdout(&cluster.cli(&["repo", "create", "t.git"]));
    assert!(cluster.terminate(1, Duration::from_secs(15)), "exit status 0 within 15 s");
    cluster.start_node(1);
    cluster.wait_serving(1);
    let listed = stdout(&cluster.cli(&["repo", "list"]));
    assert!(listed.contains("t.git"), "{listed}");
}

/// A peer that knows the cluster's secret (node 1's, its process killed and impersonated)
/// dials nodes 2 and 3 and sends what no honest replica sends: messages raft-rs would panic on
/// or that lie about their sender, frames too large, undecodable or out of place, the same
/// batch over and over, and snapshot transfers that lie about their size, their checksum,
/// their file or their Raft message. Every connection it abuses is closed or its messages
/// refused; nodes 2 and 3 keep running, keep serving writes, and lose nothing.
#[test]
fn an_authenticated_hostile_peer_cannot_kill_wedge_or_corrupt_a_node() {
    use cohort_core::node::identity::{InstanceId, PeerInstances};
    use cohort_core::persist::LogPosition;
    use cohort_core::snapshot::{SnapshotChunk, SnapshotMessage};
    use cohort_net::frame::{encode, write_frame, Frame, WireMessage};
    use cohort_net::peer::handshake::{self, Credentials};
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, Message, MessageType};
    use tokio::io::AsyncWriteExt;

    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let client = cluster.client(41);
    let h = crate::cluster::repo("h.git");
    rt.block_on(client.create_repository(&h, None)).unwrap();
    let mut acknowledged = std::collections::BTreeMap::new();
    put_all(&rt, &client, &h, 0..10, "v", &mut acknowledged);

    // Node 1 dies; a hostile process takes its place with its secret and its data
    // directory's identity.
    let identity = std::fs::read_to_string(cluster.data_dir(1).join("identity")).unwrap();
    let instance: InstanceId =
        identity.lines().find_map(|l| l.strip_prefix("instance = ")).unwrap().trim().parse().unwrap();
    cluster.kill9(1);
    let memory = PeerInstances::open(std::sync::Arc::new(cohort_storage::SimDisk::new(1))).unwrap();
    let credentials = Credentials { cluster_id: "e2e", secret: b"e2e-secret-0123", node: 1, instance, peers: &memory };

    let raft = |to: u64, kind: MessageType, tweak: &dyn Fn(&mut Message)| {
        let mut message = Message::default();
        message.set_msg_type(kind);
        message.from = 1;
        message.to = to;
        message.term = 1;
        tweak(&mut message);
        message.write_to_bytes().unwrap()
    };
    let entry = |index: u64, term: u64| {
        let mut entry = Entry::default();
        (entry.index, entry.term) = (index, term);
        entry
    };
    let chunk = |size_bytes: u64, data: Vec<u8>, crc32c: u32, raft_message: Vec<u8>| SnapshotChunk {
        transfer: 7,
        position: LogPosition { index: 1_000, term: 50 },
        size_bytes,
        offset: 0,
        crc32c,
        data,
        raft_message,
    };
    for target in [2u64, 3] {
        // Messages raft-rs panics on or must never see from a peer, for the directory, the
        // repository's partition and a partition that does not exist.
        let mut abusive = Vec::new();
        for partition in [0, 1, 999] {
            type Damage<'a> = Box<dyn Fn(&mut Message) + 'a>;
            let kinds: Vec<(MessageType, Damage<'_>)> = vec![
                (MessageType::MsgSnapshot, Box::new(|m| m.mut_snapshot().mut_metadata().index = 5)),
                (MessageType::MsgHeartbeat, Box::new(|m| (m.term, m.commit) = (u64::MAX / 2, u64::MAX))),
                (
                    MessageType::MsgAppend,
                    Box::new(|m| {
                        (m.index, m.log_term, m.commit) = (1, 1, u64::MAX);
                        m.entries = vec![entry(3, 1), entry(2, 9)].into();
                    }),
                ),
                (MessageType::MsgHup, Box::new(|_| {})),
                (MessageType::MsgBeat, Box::new(|_| {})),
                (MessageType::MsgCheckQuorum, Box::new(|_| {})),
                (MessageType::MsgTransferLeader, Box::new(|_| {})),
                (MessageType::MsgPropose, Box::new(|m| m.term = 0)),
                (MessageType::MsgReadIndex, Box::new(|m| m.term = 0)),
                (MessageType::MsgAppendResponse, Box::new(|m| m.index = u64::MAX - 1)),
                (MessageType::MsgRequestVote, Box::new(|m| m.term = 0)),
            ];
            for (kind, tweak) in &kinds {
                abusive.push(WireMessage::Raft { partition, message: raft(target, *kind, tweak.as_ref()) });
            }
            // Snapshot transfers that lie.
            let good_raft = raft(target, MessageType::MsgSnapshot, &|m| {
                let metadata = m.mut_snapshot().mut_metadata();
                (metadata.index, metadata.term) = (1_000, 50);
                metadata.mut_conf_state().voters = vec![1, 2, 3];
            });
            let data = b"not a snapshot file".to_vec();
            let crc = crc32c::crc32c(&data);
            for lie in [
                chunk(1 << 40, data.clone(), crc, good_raft.clone()),
                chunk(data.len() as u64, data.clone(), crc ^ 1, good_raft.clone()),
                chunk(data.len() as u64, data.clone(), crc, vec![1, 2, 3]),
                chunk(data.len() as u64, data.clone(), crc, good_raft.clone()),
                chunk(data.len() as u64, data.clone(), crc, raft(9, MessageType::MsgSnapshot, &|_| {})),
            ] {
                abusive.push(WireMessage::Snapshot { partition, message: SnapshotMessage::Chunk(lie) });
            }
        }
        let mislabeled =
            vec![WireMessage::Raft { partition: 1, message: raft(target, MessageType::MsgHeartbeat, &|m| m.from = 2) }];
        let address = cluster.node(target).peer_address.clone();
        rt.block_on(async {
            let connect = || async {
                let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
                handshake::dial(&mut stream, &credentials, target, [target as u8; 32]).await.expect("authenticated");
                stream
            };
            // Refused message by message: the connection stays; sent again and again.
            let mut stream = connect().await;
            for _ in 0..20 {
                let _ = write_frame(&mut stream, &Frame::Batch(abusive.clone()), 16 << 20).await;
            }
            // Each of these closes its connection.
            let closing: Vec<Vec<u8>> = vec![
                encode(&Frame::Batch(mislabeled.clone())),
                encode(&Frame::Batch(vec![WireMessage::Raft { partition: 1, message: vec![0xff; 40] }])),
                encode(&Frame::Proof { proof: [0; 32] }),
                u32::MAX.to_le_bytes().to_vec(),
                [&20u32.to_le_bytes()[..], &[0xee; 20]].concat(),
            ];
            for bytes in closing {
                let mut stream = connect().await;
                let _ = stream.write_all(&bytes).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    // Nodes 2 and 3 are alive (a panic stops a node), still a quorum, and lose nothing.
    std::thread::sleep(Duration::from_millis(500));
    for id in [2, 3] {
        assert!(cluster.children.get_mut(&id).unwrap().try_wait().unwrap().is_none(), "node {id} still runs");
        assert!(crate::cluster::http_get(&cluster.node(id).http_address, "/health").contains("200 OK"));
        let log = cluster.log(id);
        assert!(!log.contains("panicked"), "node {id} panicked:\n{log}");
        assert!(log.contains("refused a peer's raft message"), "node {id} logged what it refused");
    }
    put_all(&rt, &client, &h, 10..20, "v", &mut acknowledged);
    rt.block_on(check_all(&client, &h, &acknowledged));
    // The real node 1 comes back and is accepted as itself.
    cluster.start_node(1);
    cluster.wait_serving(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster.metric(2, "cohort_peer_alive") < 2.0 {
        assert!(std::time::Instant::now() < deadline, "node 1 was not taken back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// 32 clients write 2 MiB blobs to one partition as fast as they can (64 MiB offered at once,
/// four times what requests may fill of the partition's mailbox) while 16 read it: the leader
/// answers some `RESOURCE_EXHAUSTED` rather than queueing without bound, its peak memory stays
/// under the bound stated here, and every write it acknowledged is there afterwards. (In a
/// release build, 48 clients writing 4 MiB blobs: 168 of 192 acknowledged within 20 attempts
/// each, 1,577 busy answers, the leader's peak RSS 296 MiB.)
#[test]
fn a_flood_of_large_writes_is_answered_busy_within_bounded_memory_and_loses_nothing() {
    use cohort_core::state_machine::{ObjectKind, Oid, RefValue};
    use cohort_net::api::convert::{ref_value_to_wire, repo_to_wire};
    use cohort_net::api::proto::ref_update::Expected;

    const WRITERS: u64 = 32;
    const WRITES_EACH: u64 = 2;
    const BLOB_BYTES: usize = 2 << 20;
    /// The leader's peak RSS: requests being received (32 × 2 MiB), the mailbox (32 MiB), Raft's
    /// uncommitted entries (64 MiB), appends to two followers, the apply queue and the store's
    /// page cache, with room for the allocator.
    const PEAK_RSS_BYTES_MAX: u64 = 512 << 20;
    const ATTEMPTS_MAX: usize = 20;

    let cluster = TestCluster::start(3);
    let rt = runtime();
    let client = cluster.client(51);
    let repo = crate::cluster::repo("flood.git");
    rt.block_on(client.create_repository(&repo, None)).unwrap();
    let partition = rt.block_on(client.write(&repo, vec![], vec![])).unwrap().partition;
    let leader = cluster.leader_of(partition);
    let pid = cluster.children[&leader].id();
    let endpoint = cluster.endpoint(leader);
    let (acknowledged, busy, other, reads) = rt.block_on(async {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..16)
            .map(|r| {
                let (done, config) =
                    (done.clone(), cohort_net::client::ClientConfig::new(vec![endpoint.clone()], 600 + r));
                let repo = repo.clone();
                tokio::spawn(async move {
                    let reader = cohort_net::client::Client::new(config).unwrap();
                    let mut reads = 0u64;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        if reader.read_refs(&repo, false).await.is_ok() {
                            reads += 1;
                        }
                    }
                    reads
                })
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (endpoint, repo) = (endpoint.clone(), repo.clone());
                tokio::spawn(async move {
                    let mut grpc = CohortClient::connect(endpoint)
                        .await
                        .unwrap()
                        .max_encoding_message_size(BLOB_BYTES + (1 << 20));
                    let (mut acknowledged, mut busy, mut other) = (Vec::new(), 0u64, Vec::new());
                    for i in 0..WRITES_EACH {
                        let mut data = vec![0; BLOB_BYTES];
                        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(w << 32 | i);
                        rand::RngCore::fill_bytes(&mut rng, &mut data);
                        let oid = Oid::hash_object(ObjectKind::Blob, &data);
                        let name = format!("refs/heads/w{w}-{i}");
                        let request = proto::WriteRequest {
                            repo: Some(repo_to_wire(&repo)),
                            id: Some(proto::WriteId { client_id: 1_000 + w, sequence: i + 1 }),
                            objects: vec![proto::Object { kind: "blob".into(), data, oid: oid.0.to_vec() }],
                            refs: vec![proto::RefUpdate {
                                name: name.clone(),
                                expected: Some(Expected::Any(true)),
                                new_value: Some(ref_value_to_wire(&RefValue::Direct(oid))),
                            }],
                        };
                        // As a client does: busy or an unknown outcome is retried with the
                        // same write id, after a pause.
                        for _ in 0..ATTEMPTS_MAX {
                            match grpc.write(request.clone()).await {
                                Ok(_) => {
                                    acknowledged.push((name, oid));
                                    break;
                                }
                                Err(status) if status.code() == tonic::Code::ResourceExhausted => busy += 1,
                                Err(status) => {
                                    other.push(format!("{:?}: {}", status.code(), status.message()));
                                    // Leadership moved: follow the hint.
                                    let hint = status.metadata().get(cohort_net::api::LEADER_METADATA);
                                    if let Some(url) = hint.and_then(|v| v.to_str().ok()) {
                                        if let Ok(client) = CohortClient::connect(url.to_owned()).await {
                                            grpc = client.max_encoding_message_size(BLOB_BYTES + (1 << 20));
                                        }
                                    }
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    (acknowledged, busy, other)
                })
            })
            .collect();
        let (mut acknowledged, mut busy, mut other) = (Vec::new(), 0, Vec::new());
        for writer in writers {
            let (a, b, o) = writer.await.unwrap();
            acknowledged.extend(a);
            busy += b;
            other.extend(o);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut reads = 0;
        for reader in readers {
            reads += reader.await.unwrap();
        }
        (acknowledged, busy, other, reads)
    });
    let peak = peak_rss_bytes(pid);
    eprintln!(
        "flood: {} acknowledged, {busy} busy, {} other ({:?}), {reads} reads; leader's peak RSS {} MiB",
        acknowledged.len(),
        other.len(),
        other.first(),
        peak >> 20
    );
    assert!(busy > 0, "the partition's bounds never applied: every write was queued");
    assert!(!acknowledged.is_empty(), "some writes got through");
    assert!(peak < PEAK_RSS_BYTES_MAX, "the leader peaked at {} MiB", peak >> 20);
    for id in 1..=3 {
        assert!(cluster.log(id).lines().all(|l| !l.contains("panicked")), "node {id} panicked");
    }
    let (refs, _) = rt.block_on(client.read_refs(&repo, false)).unwrap();
    for (name, oid) in &acknowledged {
        assert!(
            refs.iter().any(|(n, v)| n.as_str() == name && *v == RefValue::Direct(*oid)),
            "acknowledged {name} is there"
        );
    }
}
