//! The user-facing commands: they talk to the manager's API and print tables
//! for people or JSON (`--json`) for scripts.

pub mod managers;
pub mod service;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::client::{Client, ClientError};
use crate::config::{ClientFile, default_client_file};
use crate::core::nodes::NodeView;
use crate::core::tokens::{NewToken, Role};
use crate::manager::events::{Event, EventKind};
use crate::security::tls::{Expect, Trust};
use crate::task::TaskState;
use crate::task::{TaskRecord, spec};

/// Reads a spec file: TOML when it ends in `.toml`, JSON otherwise.
pub fn read_spec(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read spec file {}", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    if is_toml {
        let spec = spec::parse_toml(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), describe_spec_error(&e)))?;
        Ok(serde_json::to_value(spec)?)
    } else {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    }
}

fn describe_spec_error(e: &spec::SpecError) -> String {
    match &e.field {
        Some(field) => format!("field `{field}`: {}", e.message),
        None => e.message.clone(),
    }
}

/// How the CLI reaches the manager: flags (or their environment
/// variables) first, then the client file a manager writes for its
/// machine's users.
pub struct Connect {
    pub manager: Option<String>,
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
    pub client_file: Option<PathBuf>,
}

impl Connect {
    pub fn client(self) -> anyhow::Result<Client> {
        let explicit = self.client_file.is_some();
        let file = match self.client_file.or_else(default_client_file) {
            Some(path) if explicit || path.exists() => Some(
                ClientFile::load(&path)
                    .with_context(|| format!("cannot use the client file {}", path.display()))?,
            ),
            _ => None,
        };
        let manager = self
            .manager
            .or_else(|| file.as_ref().map(|f| f.manager.clone()))
            .context(
                "which manager? give --manager https://HOST:PORT (or CUBE_MANAGER), \
                 or run on the manager's machine, where it writes ~/.cube/client.toml",
            )?;
        let ca = self
            .ca
            .or_else(|| file.as_ref().map(|f| f.ca.clone()))
            .context(
                "which CA? give --ca FILE (or CUBE_CA): the manager's <data_dir>/pki/ca.crt",
            )?;
        let token = self.token.or_else(|| file.map(|f| f.token));
        let pem = std::fs::read_to_string(&ca)
            .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
        let tls = Trust::from_pem(&pem)?.client(Expect::Manager)?;
        let client = Client::new(&manager, &tls)?;
        Ok(match token {
            Some(token) => client.with_token(&token),
            None => client,
        })
    }
}

pub(crate) fn explain(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Unreachable { url, reason } => anyhow::anyhow!(
            "cannot reach the manager ({url}): {reason}\n\
             is a manager running there? (set --manager or CUBE_MANAGER)"
        ),
        ClientError::Api { error, .. } => match error.field {
            Some(field) => anyhow::anyhow!("refused: field `{field}`: {}", error.error),
            None => anyhow::anyhow!("refused: {}", error.error),
        },
        other => other.into(),
    }
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn run(client: &Client, path: &Path, json: bool) -> anyhow::Result<()> {
    let spec = read_spec(path)?;
    let record = client.submit(&spec).await.map_err(explain)?;
    if json {
        return print_json(&record);
    }
    println!(
        "task {} ({}) accepted: {}",
        record.id, record.name, record.state
    );
    Ok(())
}

/// Finds a task by full id or unique id prefix.
async fn resolve(client: &Client, id: &str) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(id).is_ok() {
        return Ok(id.to_string());
    }
    let tasks = client.tasks().await.map_err(explain)?;
    let matches: Vec<_> = tasks
        .iter()
        .filter(|t| t.id.to_string().starts_with(id))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.id.to_string()),
        [] => bail!("no task with id {id}"),
        _ => bail!(
            "{} tasks have ids starting with {id}; give more of it",
            matches.len()
        ),
    }
}

pub async fn status(client: &Client, id: Option<&str>, json: bool) -> anyhow::Result<()> {
    let tasks = match id {
        Some(id) => {
            let id = resolve(client, id).await?;
            vec![client.task(&id).await.map_err(explain)?]
        }
        None => client.tasks().await.map_err(explain)?,
    };
    if json {
        return match id {
            Some(_) => print_json(&tasks[0]),
            None => print_json(&tasks),
        };
    }
    print!("{}", task_table(&tasks));
    Ok(())
}

pub async fn stop(client: &Client, id: &str, json: bool) -> anyhow::Result<()> {
    let id = resolve(client, id).await?;
    let record = client.stop(&id).await.map_err(explain)?;
    if json {
        return print_json(&record);
    }
    if record.state.is_terminal() {
        println!("task {} stopped: {}", record.id, record.state);
    } else {
        println!(
            "task {} will stop when its worker can be reached (now {})",
            record.id, record.state
        );
    }
    Ok(())
}

pub async fn nodes(client: &Client, json: bool) -> anyhow::Result<()> {
    let nodes = client.nodes().await.map_err(explain)?;
    if json {
        return print_json(&nodes);
    }
    print!("{}", node_table(&nodes));
    Ok(())
}

pub async fn node_remove(client: &Client, name: &str) -> anyhow::Result<()> {
    client.remove_node(name).await.map_err(explain)?;
    println!("worker {name} removed: its certificate is refused from now on, and its tasks move");
    Ok(())
}

pub async fn token_create(
    client: &Client,
    name: &str,
    role: &str,
    ttl_s: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let role: Role = serde_json::from_value(serde_json::Value::String(role.to_string()))
        .map_err(|_| anyhow::anyhow!("--role must be read, deploy or admin, not {role:?}"))?;
    let created = client
        .create_token(&NewToken {
            name: name.to_string(),
            role,
            ttl_s,
        })
        .await
        .map_err(explain)?;
    if json {
        return print_json(&created);
    }
    let expires = created
        .expires_at
        .map_or("never".to_string(), |at| at.to_rfc3339());
    println!(
        "token {} ({}), expires {expires}; its secret, shown only now:\n{}",
        created.name, created.role, created.secret
    );
    Ok(())
}

pub async fn token_list(client: &Client, json: bool) -> anyhow::Result<()> {
    let tokens = client.tokens().await.map_err(explain)?;
    if json {
        return print_json(&tokens);
    }
    let mut out = format!(
        "{:<24} {:<7} {:<26} {:<26} {}\n",
        "NAME", "ROLE", "CREATED", "EXPIRES", "BY"
    );
    for t in &tokens {
        out.push_str(&format!(
            "{:<24} {:<7} {:<26} {:<26} {}\n",
            t.name,
            t.role.as_str(),
            t.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            t.expires_at.map_or("never".to_string(), |at| at
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()),
            t.created_by.as_deref().unwrap_or("-")
        ));
    }
    print!("{out}");
    Ok(())
}

/// `role`: `worker` or `manager`.
pub async fn join_token(client: &Client, role: &str, rotate: bool) -> anyhow::Result<()> {
    let token = client.join_token(role, rotate).await.map_err(explain)?;
    if rotate {
        eprintln!("the {role} join token was rotated: the old one is refused from now on");
    }
    println!("{token}");
    Ok(())
}

pub async fn token_revoke(client: &Client, name: &str) -> anyhow::Result<()> {
    client.revoke_token(name).await.map_err(explain)?;
    println!("token {name} revoked");
    Ok(())
}

/// Prints a task's container output (stdout and stderr), streamed from its
/// worker through the manager; with `follow`, until the container stops.
pub async fn logs(client: &Client, id: &str, follow: bool) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use std::io::Write as _;
    let id = resolve(client, id).await?;
    let path = format!("/tasks/{id}/logs?follow={follow}");
    let mut stream = Box::pin(client.stream(&path).await.map_err(explain)?);
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk.map_err(explain)?)?;
        out.flush()?;
    }
    Ok(())
}

/// Prints the manager's task events, one a line, oldest first; with
/// `follow`, goes on printing them as they happen until interrupted.
pub async fn events(client: &Client, follow: bool, json: bool) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use std::io::Write as _;
    let path = if follow {
        "/events?follow=true"
    } else {
        "/events"
    };
    let mut lines = Box::pin(client.stream_lines(path).await.map_err(explain)?);
    let mut out = std::io::stdout();
    while let Some(line) = lines.next().await {
        let line = line.map_err(explain)?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if json {
            writeln!(out, "{text}")?;
        } else {
            let event: Event = serde_json::from_str(text).map_err(|e| {
                anyhow::anyhow!("the manager sent an event that cannot be read: {e}")
            })?;
            writeln!(out, "{}", event_line(&event))?;
        }
        out.flush()?;
    }
    Ok(())
}

/// One event as a line: time, task, name, node, what happened.
pub fn event_line(e: &Event) -> String {
    let what = match &e.kind {
        EventKind::State {
            from,
            to,
            error,
            exit_code,
            by,
        } => {
            let mut text = match from {
                Some(from) => format!("{from} -> {to}"),
                None => format!("{to}"),
            };
            if let Some(by) = by {
                text.push_str(&format!(" [by {by}]"));
            }
            // The exit code and error say why a container went; a task that
            // (re)starts keeps the last ones in its record, not news here.
            if *to != TaskState::Running {
                if let Some(code) = exit_code {
                    text.push_str(&format!(" (exit code {code})"));
                }
                if let Some(error) = error {
                    text.push_str(&format!(": {error}"));
                }
            }
            text
        }
        EventKind::Restart {
            restart_count,
            exit_code,
        } => match exit_code {
            Some(code) => format!("restart {restart_count} (exit code {code})"),
            None => format!("restart {restart_count}"),
        },
        EventKind::Health { state, last_probe } => format!(
            "health {} ({})",
            format!("{state:?}").to_lowercase(),
            last_probe.as_deref().unwrap_or("-")
        ),
        EventKind::Service { message } => format!("service: {message}"),
    };
    format!(
        "{}  {}  {}  {}  {what}",
        e.at.format("%H:%M:%S%.3f"),
        &e.task.to_string()[..8],
        e.name,
        e.node.as_deref().unwrap_or("-")
    )
}

/// Formats rows as left-aligned columns.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

pub fn task_table(tasks: &[TaskRecord]) -> String {
    let rows = tasks
        .iter()
        .map(|t| {
            let ports = t
                .host_ports
                .iter()
                .map(|(c, h)| format!("{h}->{c}"))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                t.id.to_string(),
                t.name.clone(),
                t.state.to_string(),
                t.node.clone().unwrap_or_else(|| "-".into()),
                t.container_id
                    .as_deref()
                    .map(|c| c[..c.len().min(12)].to_string())
                    .unwrap_or_else(|| "-".into()),
                if ports.is_empty() { "-".into() } else { ports },
                t.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "STATE",
            "NODE",
            "CONTAINER",
            "PORTS",
            "EXIT",
            "ERROR",
        ],
        rows,
    )
}

pub fn node_table(nodes: &[NodeView]) -> String {
    let now = chrono::Utc::now();
    let rows = nodes
        .iter()
        .map(|n| {
            let seen = n
                .last_heartbeat
                .map(|at| {
                    format!(
                        "{:.1}s ago",
                        (now - at).num_milliseconds().max(0) as f64 / 1000.0
                    )
                })
                .unwrap_or_else(|| "-".into());
            let usage = n
                .usage
                .as_ref()
                .map(|u| {
                    format!(
                        "{:.0}% cpu, {} MB free, load {:.2}",
                        u.cpu_usage_percent, u.memory_available_mb, u.load_1m
                    )
                })
                .unwrap_or_else(|| "-".into());
            vec![
                n.name.clone(),
                n.address.clone(),
                n.state.as_str().to_string(),
                seen,
                format!(
                    "{}/{}",
                    trim_float(n.allocated.cpus),
                    trim_float(n.capacity.cpus)
                ),
                format!("{}/{}", n.allocated.memory_mb, n.capacity.memory_mb),
                format!("{}/{}", n.allocated.disk_mb, n.capacity.disk_mb),
                n.tasks.to_string(),
                usage,
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "STATE",
            "HEARTBEAT",
            "CPUS",
            "MEMORY_MB",
            "DISK_MB",
            "TASKS",
            "USAGE",
        ],
        rows,
    )
}

/// `2`, `0.25`: no trailing zeros.
fn trim_float(x: f64) -> String {
    let text = format!("{x:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_lose_trailing_zeros() {
        assert_eq!(trim_float(2.0), "2");
        assert_eq!(trim_float(0.25), "0.25");
        assert_eq!(trim_float(1.5), "1.5");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn the_example_specs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(ext) = path.extension() else {
                continue;
            };
            if ext != "json" && ext != "toml" {
                continue;
            }
            let value = read_spec(&path).unwrap();
            spec::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
        assert!(seen >= 6, "{seen} example specs");
        // Service specs, in their own folder.
        let dir = dir.join("services");
        let mut services = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let value = read_spec(&path).unwrap();
            crate::service::spec::from_value(value)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            services += 1;
        }
        assert!(services >= 2, "{services} example services");
    }

    #[test]
    fn spec_files_in_toml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("t.toml");
        std::fs::write(&toml_path, "name = \"a\"\nimage = \"b\"\nports = [80]\n").unwrap();
        let v = read_spec(&toml_path).unwrap();
        assert_eq!(v["ports"][0], 80);
        std::fs::write(&toml_path, "name = \"a\"\nimage = 1\n").unwrap();
        let e = read_spec(&toml_path).unwrap_err().to_string();
        assert!(e.contains("`image`"), "{e}");
        let json_path = dir.path().join("t.json");
        std::fs::write(&json_path, "{\"name\": \"a\"").unwrap();
        assert!(read_spec(&json_path).is_err());
    }
}
