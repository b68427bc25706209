//! The `cube` binary: `cube node` runs a node; the other commands talk to a
//! manager over HTTP.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cube::config::NodeConfig;

/// mimalloc: the balancer allocates per request, and glibc's allocator
/// took about a tenth of its user time (perf) under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cube", version, about = "A small container orchestrator")]
struct Cli {
    /// The manager's URL (https://...); default: the client file's.
    #[arg(long, global = true, env = "CUBE_MANAGER")]
    manager: Option<String>,
    /// The cluster's CA certificate (PEM file); default: the client file's.
    #[arg(long, global = true, env = "CUBE_CA")]
    ca: Option<PathBuf>,
    /// The token to send; default: the client file's.
    #[arg(long, global = true, env = "CUBE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The client file a manager writes for its machine's users; default
    /// ~/.cube/client.toml.
    #[arg(long, global = true, env = "CUBE_CLIENT_FILE")]
    client_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (manager, worker or dev) as its TOML config says
    /// (`--config`), or list (`ls`) or remove (`rm`) the cluster's workers.
    #[command(args_conflicts_with_subcommands = true)]
    Node {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<NodeCommand>,
    },
    /// Submit a task spec (JSON, or TOML when the file ends in .toml).
    Run { spec: PathBuf },
    /// Show all tasks, or one.
    Status { id: Option<String> },
    /// Stop a task: its container is stopped and removed.
    Stop { id: String },
    /// List the worker nodes.
    Nodes,
    /// Show a task's container output (stdout and stderr).
    Logs {
        id: String,
        /// Keep following the output until the container stops.
        #[arg(long, short)]
        follow: bool,
    },
    /// Show (or rotate) the token workers or managers join with (admin).
    JoinToken {
        /// `worker` or `manager`.
        role: JoinRole,
        /// Make a new one; the old one is refused from now on (joined
        /// nodes keep their certificates).
        #[arg(long)]
        rotate: bool,
    },
    /// The cluster's managers: list (`ls`) or remove (`rm ID`).
    Manager {
        #[command(subcommand)]
        command: ManagerCommand,
    },
    /// Services: replicas kept running, scaled, updated and rolled back.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Make, list and revoke users' tokens (admin).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Show task events (state changes, restarts, health), oldest first.
    Events {
        /// Keep following: print events as they happen.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Create a service from its spec (JSON, or TOML when the file ends in .toml).
    Create { spec: PathBuf },
    /// List the services: version, healthy/desired replicas, update state.
    Ls,
    /// A service and its replicas, slot by slot.
    Ps { name: String },
    /// Set the number of replicas: `cube service scale web=5`.
    Scale { target: String },
    /// Roll out a new spec, slot by slot.
    Update { name: String, spec: PathBuf },
    /// Go back to the previous version.
    Rollback { name: String },
    /// Stop every replica and remove the service.
    Rm { name: String },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List the worker nodes (as `cube nodes`).
    Ls,
    /// Remove a worker from the cluster (admin): its certificate is
    /// refused from now on and its tasks move to other nodes. It may join
    /// again later with a join token.
    Rm { name: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum JoinRole {
    Worker,
    Manager,
}

#[derive(Subcommand)]
enum ManagerCommand {
    /// The managers: who leads, the term, each one's last contact.
    Ls,
    /// Remove a manager (admin); refused when the managers left would not
    /// be a reachable majority, unless `--force`.
    Rm {
        id: u64,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token; its secret is printed once.
    Create {
        name: String,
        /// read | deploy | admin
        #[arg(long)]
        role: String,
        /// Seconds it lives (default: until revoked).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List the tokens (names, roles, expiry; never secrets).
    Ls,
    /// Revoke a token: refused from the next request on.
    Revoke { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node {
            config: Some(config),
            ..
        } => run_node(config),
        Command::Node {
            config: None,
            command: None,
        } => {
            eprintln!("cube node: give --config FILE to run a node, or `ls` or `rm NAME`");
            return ExitCode::FAILURE;
        }
        command => {
            let connect = cube::cli::Connect {
                manager: cli.manager,
                ca: cli.ca,
                token: cli.token,
                client_file: cli.client_file,
            };
            let client = match connect.client() {
                Ok(client) => client,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let json = cli.json;
            actix_rt::System::new().block_on(async move {
                match command {
                    Command::Run { spec } => cube::cli::run(&client, &spec, json).await,
                    Command::Status { id } => cube::cli::status(&client, id.as_deref(), json).await,
                    Command::Stop { id } => cube::cli::stop(&client, &id, json).await,
                    Command::Nodes => cube::cli::nodes(&client, json).await,
                    Command::Events { follow } => cube::cli::events(&client, follow, json).await,
                    Command::Logs { id, follow } => cube::cli::logs(&client, &id, follow).await,
                    Command::JoinToken { role, rotate } => {
                        let role = match role {
                            JoinRole::Worker => "worker",
                            JoinRole::Manager => "manager",
                        };
                        cube::cli::join_token(&client, role, rotate).await
                    }
                    Command::Manager { command } => match command {
                        ManagerCommand::Ls => cube::cli::managers::list(&client, json).await,
                        ManagerCommand::Rm { id, force } => {
                            cube::cli::managers::remove(&client, id, force, json).await
                        }
                    },
                    Command::Service { command } => match command {
                        ServiceCommand::Create { spec } => {
                            cube::cli::service::create(&client, &spec, json).await
                        }
                        ServiceCommand::Ls => cube::cli::service::list(&client, json).await,
                        ServiceCommand::Ps { name } => {
                            cube::cli::service::ps(&client, &name, json).await
                        }
                        ServiceCommand::Scale { target } => {
                            cube::cli::service::scale(&client, &target, json).await
                        }
                        ServiceCommand::Update { name, spec } => {
                            cube::cli::service::update(&client, &name, &spec, json).await
                        }
                        ServiceCommand::Rollback { name } => {
                            cube::cli::service::rollback(&client, &name, json).await
                        }
                        ServiceCommand::Rm { name } => {
                            cube::cli::service::remove(&client, &name).await
                        }
                    },
                    Command::Token { command } => match command {
                        TokenCommand::Create { name, role, ttl } => {
                            cube::cli::token_create(&client, &name, &role, ttl, json).await
                        }
                        TokenCommand::Ls => cube::cli::token_list(&client, json).await,
                        TokenCommand::Revoke { name } => {
                            cube::cli::token_revoke(&client, &name).await
                        }
                    },
                    Command::Node {
                        command: Some(NodeCommand::Ls),
                        ..
                    } => cube::cli::nodes(&client, json).await,
                    Command::Node {
                        command: Some(NodeCommand::Rm { name }),
                        ..
                    } => cube::cli::node_remove(&client, &name).await,
                    Command::Node { .. } => unreachable!("handled above"),
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cube: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(config_path: PathBuf) -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = NodeConfig::load(&config_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
    actix_rt::System::new().block_on(cube::node::run(config))
}
