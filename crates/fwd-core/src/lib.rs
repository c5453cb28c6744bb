//! The sans-I/O heart of fwd.
//!
//! Nothing in this crate performs I/O, reads a clock or spawns anything: the
//! daemon feeds it facts (containers seen on a host, listeners it holds, the
//! current `Instant`) and executes the actions it returns. That keeps every
//! decision unit- and property-testable with a fake clock.

pub mod backoff;
pub mod budget;
pub mod classify;
pub mod defaults;
pub mod discovery;
pub mod doctor;
pub mod engine_requests;
pub mod expose;
pub mod hostsfile;
pub mod model;
pub mod names;
pub mod paths;
pub mod reconcile;
pub mod reload;
pub mod repeat;
pub mod route;
pub mod rules;
pub mod slots;
pub mod socket_trust;
pub mod startup;
pub mod supervisor;
pub mod udp;

pub use backoff::{Backoff, BackoffPolicy};
pub use budget::{
    AcceptBackoff, AcceptFailed, Admit, CapReports, Capped, LimitSettings, Limits, RefusalLog,
    Refusals, TotalNews,
};
pub use classify::{classify_ssh_failure, FailureClass, FailureKind};
pub use expose::{
    parse_bind_scope, parse_expose, remote_binds, BindScope, ExposeCommand, ExposeFailure,
    ExposeMachine, ExposeNotice, ExposeSource, ExposeSpec, ExposeState, Exposure, RemoteBind,
    VerifyResult,
};
pub use model::{
    Claim, Container, ContainerEvent, ContainerId, EventAction, HostKey, InvalidContainerId,
    PortBinding, Protocol, Remote, Unsupported,
};
pub use reconcile::{desired_forwards, plan, reconcile, Action, Desired, Held, HostView, Plan};
pub use reload::{reload_plan, ReloadPlan};
pub use repeat::{EpisodeLog, EpisodeSnapshot, RecentLines, RepeatGate, UpLog, Verdict};
pub use route::{
    direct_open_within, judge_direct_failure, judge_direct_silence, retry_direct_refused,
    DirectFailure, NetworkAttachment, PublishedWhy, Route, RouteFacts, DIRECT_OPEN_WITHIN,
};
pub use rules::{Decision, Rule, RuleAction, Rules};
pub use startup::{listen_probe_wait, retry_refused};
pub use supervisor::{
    Command, EngineHealth, EngineRoute, Failure, Handover, Health, HostMachine, HostPolicy, Input,
    LastError, MasterPhase, Op, OpId, Outcome, Record, StreamPhase, DEFAULT_ENGINE_SOCKET,
    ENGINE_GONE_AFTER, INSPECTS_AT_ONCE,
};
