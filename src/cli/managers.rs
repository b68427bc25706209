//! `cube manager ls` / `cube manager rm ID`.

use super::{explain, print_json, table};
use crate::client::Client;
use crate::wire::ClusterView;

pub async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    // The leader's view: it hears from every member.
    let view = client.cluster(true).await.map_err(explain)?;
    if json {
        return print_json(&view);
    }
    print!("{}", cluster_table(&view));
    Ok(())
}

pub async fn remove(client: &Client, id: u64, force: bool, json: bool) -> anyhow::Result<()> {
    let view = client.remove_manager(id, force).await.map_err(explain)?;
    if json {
        return print_json(&view);
    }
    println!("manager {id} removed");
    print!("{}", cluster_table(&view));
    Ok(())
}

pub fn cluster_table(view: &ClusterView) -> String {
    let rows = view
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.name.clone(),
                m.url.clone(),
                if m.leader {
                    "leader".to_string()
                } else if m.voter {
                    "voter".to_string()
                } else {
                    "learner".to_string()
                },
                m.last_contact_ms.map_or("-".to_string(), |ms| {
                    format!("{:.1}s ago", ms as f64 / 1000.0)
                }),
                m.matched_index.map_or("-".to_string(), |i| i.to_string()),
            ]
        })
        .collect();
    let mut out = format!(
        "term {}, log at {}, applied {}\n",
        view.term,
        view.last_log_index
            .map_or("-".into(), |i: u64| i.to_string()),
        view.applied_index
            .map_or("-".into(), |i: u64| i.to_string())
    );
    out.push_str(&table(
        &["ID", "NAME", "URL", "ROLE", "CONTACT", "MATCHED"],
        rows,
    ));
    out
}
