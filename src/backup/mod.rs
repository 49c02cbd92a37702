//! Backups and restores of teams' databases (SPEC §11, seed 002): the
//! object storage ([`storage`]), the Job that dumps or restores
//! ([`job`]) and what it runs ([`dump`]), one pass over a `DatabaseBackup`
//! ([`pass`]), and what a `Database` does for its backups: schedule and
//! retention ([`schedule`]), restore on creation and backup before delete
//! ([`database`]). Free of actix: `actors/provision` drives the passes.

pub mod database;
pub mod dump;
pub mod job;
pub mod pass;
pub mod schedule;
pub mod storage;
