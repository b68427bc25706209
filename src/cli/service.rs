//! `cube service create | ls | ps | scale | update | rollback | rm`.

use std::path::Path;

use anyhow::bail;

use super::{explain, print_json, read_spec, table, task_table};
use crate::client::Client;
use crate::service::ServiceView;

pub async fn create(client: &Client, path: &Path, json: bool) -> anyhow::Result<()> {
    let spec = read_spec(path)?;
    let view = client.create_service(&spec).await.map_err(explain)?;
    if json {
        return print_json(&view);
    }
    println!(
        "service {} created: {} replicas (version {})",
        view.name, view.desired, view.version
    );
    Ok(())
}

pub async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let services = client.services().await.map_err(explain)?;
    if json {
        return print_json(&services);
    }
    print!("{}", service_table(&services));
    Ok(())
}

/// The service and its replicas (`cube service ps NAME`).
pub async fn ps(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let view = client.service(name).await.map_err(explain)?;
    let tasks = client
        .tasks_where(&format!("service={name}"))
        .await
        .map_err(explain)?;
    let mut tasks: Vec<_> = tasks
        .into_iter()
        .filter(|t| t.service_id == Some(view.id))
        .collect();
    tasks.sort_by_key(|t| (t.slot, t.created_at));
    if json {
        return print_json(&serde_json::json!({ "service": view, "tasks": tasks }));
    }
    print!("{}", service_table(std::slice::from_ref(&view)));
    for wait in &view.waiting {
        println!("slot {}: {}", wait.slot, wait.why);
    }
    if let Some(message) = view.update.as_ref().and_then(|u| u.message.as_ref()) {
        println!("update: {message}");
    }
    println!();
    print!("{}", task_table(&tasks));
    Ok(())
}

/// `NAME=N`.
pub async fn scale(client: &Client, target: &str, json: bool) -> anyhow::Result<()> {
    let Some((name, count)) = target.split_once('=') else {
        bail!("give NAME=REPLICAS, e.g. web=5");
    };
    let Ok(replicas) = count.parse::<u32>() else {
        bail!("{count:?} is not a number of replicas");
    };
    let view = client
        .scale_service(name, replicas)
        .await
        .map_err(explain)?;
    if json {
        return print_json(&view);
    }
    println!("service {} scaled to {} replicas", view.name, view.desired);
    Ok(())
}

pub async fn update(client: &Client, name: &str, path: &Path, json: bool) -> anyhow::Result<()> {
    let spec = read_spec(path)?;
    let view = client.update_service(name, &spec).await.map_err(explain)?;
    if json {
        return print_json(&view);
    }
    match &view.update {
        Some(u) if u.state.in_progress() => println!(
            "service {}: updating from version {} to {}",
            view.name, u.from_version, u.to_version
        ),
        _ => println!(
            "service {}: nothing to change (version {})",
            view.name, view.version
        ),
    }
    Ok(())
}

pub async fn rollback(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let view = client.rollback_service(name).await.map_err(explain)?;
    if json {
        return print_json(&view);
    }
    println!(
        "service {}: rolling back to version {}",
        view.name, view.version
    );
    Ok(())
}

pub async fn remove(client: &Client, name: &str) -> anyhow::Result<()> {
    client.remove_service(name).await.map_err(explain)?;
    println!("service {name} removed: its replicas are stopping");
    Ok(())
}

pub fn service_table(services: &[ServiceView]) -> String {
    let rows = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.version.to_string(),
                format!("{}/{}", s.healthy, s.desired),
                s.running.to_string(),
                s.spec.task.image.clone(),
                s.update
                    .as_ref()
                    .map(|u| u.state.as_str().to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &["NAME", "VERSION", "HEALTHY", "RUNNING", "IMAGE", "UPDATE"],
        rows,
    )
}
