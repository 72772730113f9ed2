//! `kv_client`: command-line client for rskv with leader redirect.
//!
//! Thin: flags → [`rskv_client::Client`] → output. Human-readable by default, one JSON object per
//! command with `--json`. Exit codes: 0 success, 1 the operation failed, 2 bad usage.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use clap::Subcommand;
use rskv_client::Client;
use rskv_client::ClientError;
use rskv_client::ClientOptions;
use rskv_client::Consistency;
use rskv_client::DEV_ADDR;
use serde_json::json;

/// Talk to an rskv cluster: any node will do, requests follow the leader.
#[derive(Debug, Parser)]
#[command(name = "kv_client", version, about)]
struct Args {
    /// Comma-separated node addresses (host:port, or https://host:port with --cacert).
    #[arg(long, global = true, value_delimiter = ',', default_value = DEV_ADDR, env = "RSKV_ENDPOINTS")]
    endpoints: Vec<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this many seconds (retries and redirects included).
    #[arg(long, global = true, default_value_t = 5.0)]
    timeout: f64,
    #[command(flatten)]
    security: rskv_client::tls::SecurityArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a key (linearizable unless --stale).
    Get {
        #[arg(long, short)]
        key: String,
        /// Serve from whichever node answers, possibly behind the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Write a key.
    #[command(alias = "put")]
    Set {
        #[arg(long, short)]
        key: String,
        #[arg(long, short)]
        value: String,
        /// Also print the previous value.
        #[arg(long)]
        prev: bool,
    },
    /// Delete a key.
    Delete {
        #[arg(long, short)]
        key: String,
    },
    /// List keys in [start, end) in order.
    Scan {
        /// First key (inclusive); default: the beginning.
        #[arg(long, default_value = "")]
        start: String,
        /// End key (exclusive); default: no end.
        #[arg(long, default_value = "")]
        end: String,
        /// Maximum pairs to print.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        stale: bool,
    },
    /// Compare-and-swap: set the key to --value only if it holds --expected (or is absent).
    Cas {
        #[arg(long, short)]
        key: String,
        /// The value the key must hold.
        #[arg(long, conflicts_with = "absent", required_unless_present = "absent")]
        expected: Option<String>,
        /// Require the key to be absent instead.
        #[arg(long)]
        absent: bool,
        /// The new value.
        #[arg(long, short)]
        value: String,
    },
    /// Print the changes of a key or prefix, with their revisions, until Ctrl-C: from a past
    /// revision (`--rev`, read from the store's history), or those made from now on.
    Watch {
        /// Watch exactly this key.
        #[arg(
            long,
            short,
            conflicts_with = "prefix",
            required_unless_present = "prefix"
        )]
        key: Option<String>,
        /// Watch every key starting with this prefix ("" for all keys).
        #[arg(long)]
        prefix: Option<String>,
        /// Start from this store revision (every change since, then live ones; to resume, the
        /// revision after the last one printed); 0: changes from now on.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        rev: i64,
    },
    /// Show every endpoint's Raft status in a table.
    Status,
    /// List or change the cluster membership.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Move leadership to a voter (default: the most caught-up one).
    TransferLeader {
        /// The voter that should lead.
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// Voters and learners, with each node's replicated index (from the leader).
    List,
    /// Add a node as a learner (it replicates but does not vote until promoted).
    Add {
        /// The new node's id.
        id: u64,
        /// Its client address (host:port).
        addr: String,
        /// Its Raft peer address; default: the client port + 1.
        #[arg(long, default_value = "")]
        peer_addr: String,
    },
    /// Promote a caught-up learner to voter.
    Promote { id: u64 },
    /// Remove a voter or learner.
    Remove { id: u64 },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        eprintln!("error: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // A bad endpoint list is bad usage (exit 2), told apart from an operation that failed.
    let deadline = Duration::from_secs_f64(args.timeout);
    let (tls, credentials) = match args.security.connection() {
        Ok(connection) => connection,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let options = ClientOptions {
        deadline,
        attempt_timeout: deadline.min(Duration::from_secs(3)),
        tls,
        credentials,
        ..ClientOptions::default()
    };
    let client = match Client::with_options(args.endpoints.clone(), options) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let result = run(args, &client).await;
        // A write opened a session: close it rather than leave it to expire.
        client.close().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

async fn run(args: Args, client: &Client) -> Result<(), ClientError> {
    let json = args.json;
    match args.command {
        Command::Get { key, stale } => {
            let resp = client.get_with(key.clone(), consistency(stale)).await?;
            if json {
                println!(
                    "{}",
                    json!({"key": key, "found": resp.found, "value": resp.found.then(|| text(&resp.value)), "applied_index": resp.applied_index})
                );
            } else if resp.found {
                println!("{}", text(&resp.value));
            } else {
                println!("(not found)");
            }
        }
        Command::Set { key, value, prev } => {
            let resp = client.put_with(key.clone(), value, prev).await?;
            let prev_text = resp.prev_value.as_deref().map(text);
            if json {
                println!(
                    "{}",
                    json!({"key": key, "index": resp.index, "prev_value": prev_text})
                );
            } else {
                println!("OK (index {})", resp.index);
                if prev {
                    println!("previous: {}", prev_text.unwrap_or_else(|| "(none)".into()));
                }
            }
        }
        Command::Delete { key } => {
            let resp = client.delete(key.clone()).await?;
            if json {
                println!(
                    "{}",
                    json!({"key": key, "index": resp.index, "existed": resp.existed})
                );
            } else if resp.existed {
                println!("deleted (index {})", resp.index);
            } else {
                println!("not found; nothing deleted (index {})", resp.index);
            }
        }
        Command::Scan {
            start,
            end,
            limit,
            stale,
        } => {
            let resp = client.scan(start, end, limit, consistency(stale)).await?;
            if json {
                let pairs: Vec<_> = resp
                    .pairs
                    .iter()
                    .map(|kv| json!({"key": text(&kv.key), "value": text(&kv.value)}))
                    .collect();
                println!(
                    "{}",
                    json!({"pairs": pairs, "next_start": resp.next_start.as_deref().map(text)})
                );
            } else {
                for kv in &resp.pairs {
                    println!("{} = {}", text(&kv.key), text(&kv.value));
                }
                if let Some(next) = &resp.next_start {
                    println!("... more from {:?} (use --start)", text(next));
                }
            }
        }
        Command::Cas {
            key,
            expected,
            absent: _,
            value,
        } => {
            let outcome = client
                .compare_and_swap(key.clone(), expected.map(Bytes::from), value)
                .await?;
            let current = outcome.current.as_deref().map(text);
            if json {
                println!(
                    "{}",
                    json!({"key": key, "success": outcome.success, "index": outcome.index, "current": current})
                );
            } else if outcome.success {
                println!("OK (index {})", outcome.index);
            } else {
                println!(
                    "FAILED: current value is {}",
                    current.unwrap_or_else(|| "(absent)".into())
                );
            }
            if !outcome.success {
                return Err(ClientError::Status(tonic::Status::failed_precondition(
                    "compare-and-swap did not match",
                )));
            }
        }
        Command::Status => status(client, json).await?,
        Command::Member(cmd) => member(client, cmd, json).await?,
        Command::TransferLeader { to } => {
            let resp = client.transfer_leader(to).await?;
            if json {
                println!(
                    "{}",
                    json!({"leader_id": resp.leader_id, "leader_addr": resp.leader_addr})
                );
            } else {
                println!(
                    "leader is now node {} at {}",
                    resp.leader_id, resp.leader_addr
                );
            }
        }
        Command::Watch { key, prefix, rev } => {
            let (target, is_prefix) = match (key, prefix) {
                (Some(k), _) => (k, false),
                (None, Some(p)) => (p, true),
                (None, None) => (String::new(), true),
            };
            watch(client, target, is_prefix, rev, json).await?;
        }
    }
    Ok(())
}

async fn watch(
    client: &Client,
    target: String,
    prefix: bool,
    rev: i64,
    json: bool,
) -> Result<(), ClientError> {
    let mut stream = client.watch(target, prefix, rev).await?;
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let batch = match message {
            Ok(Some(batch)) => batch,
            Ok(None) => return Ok(()),
            Err(status) => return Err(ClientError::Status(status)),
        };
        for e in batch.events {
            let is_put = e.kind == rskv_proto::kv::watch_event::Kind::Put as i32;
            if json {
                println!(
                    "{}",
                    json!({
                        "type": if is_put { "put" } else { "delete" },
                        "key": text(&e.key),
                        "value": is_put.then(|| text(&e.value)),
                        "prev_value": e.prev_value.as_deref().map(text),
                        "revision": e.revision,
                    })
                );
            } else if is_put {
                println!(
                    "PUT {} = {} (revision {})",
                    text(&e.key),
                    text(&e.value),
                    e.revision
                );
            } else {
                println!("DELETE {} (revision {})", text(&e.key), e.revision);
            }
        }
    }
}

fn print_members(members: &[rskv_proto::kv::Member], json: bool) {
    if json {
        let items: Vec<_> = members
            .iter()
            .map(|m| json!({"id": m.id, "addr": m.addr, "peer_addr": m.peer_addr, "voter": m.voter, "promoted_by_request": m.promoted_by_request, "matched_index": m.matched_index}))
            .collect();
        println!("{}", json!(items));
        return;
    }
    println!(
        "{:>3} {:<8} {:<22} {:<22} {:>9}",
        "ID", "ROLE", "ADDR", "PEER_ADDR", "MATCHED"
    );
    for m in members {
        println!(
            "{:>3} {:<8} {:<22} {:<22} {:>9}",
            m.id,
            match (m.voter, m.promoted_by_request) {
                (true, _) => "voter",
                (false, false) => "learner",
                (false, true) => "learner*",
            },
            m.addr,
            m.peer_addr,
            m.matched_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    if members.iter().any(|m| !m.voter && m.promoted_by_request) {
        println!("* stays a learner until promoted (kv_client member promote ID)");
    }
}

async fn member(client: &Client, cmd: MemberCommand, json: bool) -> Result<(), ClientError> {
    let resp = match cmd {
        MemberCommand::List => {
            // Ask the leader, which knows every node's match index.
            let leader = client.leader_status().await?;
            print_members(&leader.members, json);
            return Ok(());
        }
        MemberCommand::Add {
            id,
            addr,
            peer_addr,
        } => client.add_learner(id, &addr, &peer_addr).await?,
        MemberCommand::Promote { id } => client.promote(id).await?,
        MemberCommand::Remove { id } => client.remove_member(id).await?,
    };
    if !json {
        if resp.index == 0 {
            println!("no change needed");
        } else {
            println!("membership changed (index {})", resp.index);
        }
    }
    print_members(&resp.members, json);
    Ok(())
}

async fn status(client: &Client, json: bool) -> Result<(), ClientError> {
    let mut rows = Vec::new();
    let mut reachable = 0;
    for ep in client.endpoints() {
        let s = client.status_of(ep).await;
        if s.is_ok() {
            reachable += 1;
        }
        rows.push((ep.clone(), s));
    }
    if json {
        let items: Vec<_> = rows
            .iter()
            .map(|(ep, s)| match s {
                Ok(s) => json!({
                    "endpoint": ep, "id": s.id, "role": s.role, "term": s.term,
                    "leader_id": s.leader_id, "leader_addr": s.leader_addr,
                    "last_log_index": s.last_log_index, "committed": s.committed,
                    "applied": s.applied, "snapshot_index": s.snapshot_index,
                    "purged_index": s.purged_index, "engine": s.engine,
                    "quorum": s.quorum, "quorum_ack_ms": s.quorum_ack_ms, "sessions": s.sessions,
                    "members": s.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter})).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"endpoint": ep, "error": e.to_string()}),
            })
            .collect();
        println!("{}", json!(items));
    } else {
        println!(
            "{:<22} {:>3} {:<10} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:<8} {:<6}",
            "ENDPOINT",
            "ID",
            "ROLE",
            "TERM",
            "LEADER",
            "LAST_LOG",
            "COMMITTED",
            "APPLIED",
            "SNAPSHOT",
            "PURGED",
            "ENGINE",
            "QUORUM"
        );
        for (ep, s) in &rows {
            match s {
                Ok(s) => println!(
                    "{:<22} {:>3} {:<10} {:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:<8} {:<6}",
                    ep,
                    s.id,
                    s.role,
                    s.term,
                    s.leader_id
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.last_log_index,
                    s.committed,
                    s.applied,
                    s.snapshot_index,
                    s.purged_index,
                    s.engine,
                    match (s.role.as_str(), s.quorum) {
                        ("leader", true) => "ok",
                        ("leader", false) => "LOST",
                        _ => "-",
                    }
                ),
                Err(e) => println!("{ep:<22} unreachable: {e}"),
            }
        }
        // The leader's view has every member's match index; any node's will do otherwise.
        let view = rows
            .iter()
            .filter_map(|(_, s)| s.as_ref().ok())
            .max_by_key(|s| (s.role == "leader", s.term));
        if let Some(s) = view {
            println!();
            println!("membership (as node {} sees it):", s.id);
            print_members(&s.members, false);
        }
    }
    if reachable == 0 {
        return Err(ClientError::Unavailable("no endpoint answered".into()));
    }
    Ok(())
}
