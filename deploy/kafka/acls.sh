#!/usr/bin/env bash
# Example: ACLs for a SASL/SCRAM Kafka cluster, one principal per service, matching the signing
# principals of `lepton keys principals` (ingest, governance, trainer, serving, monitor,
# operator), plus the two kinds of outside clients (producers of raw events, prediction apps).
# Each service then runs with
#   LEPTON_KAFKA_SECURITY_PROTOCOL=SASL_SSL  LEPTON_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
#   LEPTON_KAFKA_SASL_USERNAME=lepton-<service>  LEPTON_KAFKA_SASL_PASSWORD=<its own secret>
#   LEPTON_KAFKA_SSL_CA_LOCATION=/run/secrets/kafka-ca.pem
# Run with an admin client config: ./acls.sh broker:9093 admin.properties
# (topic prefix `lepton.`; consumer groups and transactional ids as the services derive them
# from their defaults: LEPTON_*_GROUP overrides need matching prefixes here).
# tests/unit/test_compose.py checks these grants against what each service's code reads and
# writes (its stage inputs/outputs and every topic it names), and against the topic registry.
set -euo pipefail
bootstrap=${1:?bootstrap server}
config=${2:?admin client properties}
p=${LEPTON_TOPIC_PREFIX:-lepton.}
acl() { kafka-acls.sh --bootstrap-server "$bootstrap" --command-config "$config" --add "$@"; }

# user | topics it reads | topics it writes | consumer group prefix | transactional id prefix
grant() {
  local user=$1 reads=$2 writes=$3 group=$4 txn=$5
  for t in $reads; do acl --allow-principal "User:$user" --operation Read --operation Describe --topic "$p$t"; done
  for t in $writes; do acl --allow-principal "User:$user" --operation Write --operation Describe --topic "$p$t"; done
  if [ -n "$group" ]; then
    acl --allow-principal "User:$user" --operation Read --group "$group" --resource-pattern-type prefixed
  fi
  if [ -n "$txn" ]; then
    acl --allow-principal "User:$user" --operation Write --operation Describe \
      --transactional-id "$txn" --resource-pattern-type prefixed
  fi
  if [ -n "$writes" ]; then
    acl --allow-principal "User:$user" --operation IdempotentWrite --cluster
  fi
}

# exactly-once stages: input positions are read back from, and written to, their own topic;
# ingest also publishes its signed data-quality windows
grant lepton-ingest "events.raw ingest.offsets" \
  "events.clean events.rejected ingest.offsets quality.windows" "${p}ingest" "${p}ingest"
grant lepton-governance "events.clean audit.requests governance.offsets" \
  "events.governed audit.log events.rejected governance.offsets" "${p}governance" "${p}governance"
# the trainer announces models and records its releases and quality holds (decisions) for
# governance to seal; it reads ingest's quality windows (assigned, no group) to hold cycles
grant lepton-trainer "events.governed federation.rounds quality.windows" \
  "models.updates audit.requests events.rejected federation.updates" "lepton-trainer-" ""
# serving: model announcements in; Kafka predictions; rollouts made through its admin API are
# announced (models.updates) and recorded (audit.requests); bad requests go to the DLQ
grant lepton-serving "models.updates predictions.requests" \
  "predictions.results predictions.log events.rejected models.updates audit.requests" \
  "lepton-serving" ""
# monitor: reads the prediction log and labels; its scaling advice reads every group's input
# topics, positions topics and committed offsets (Describe on the groups, never their Read)
grant lepton-monitor "predictions.log events.governed events.raw events.clean audit.requests \
  predictions.requests ingest.offsets governance.offsets" "audit.requests" "lepton-monitor" ""
for g in "${p}" lepton-; do
  acl --allow-principal User:lepton-monitor --operation Describe --group "$g" \
    --resource-pattern-type prefixed
done
# federation coordinator (`lepton federate`): round tasks out, sites' answers in; releases the
# federated model like the trainer (announcement, decisions). On a separate federation cluster
# only the federation.* grants (and the sites' trainer grants on them) apply there.
grant lepton-federation "federation.updates" "federation.rounds models.updates audit.requests" \
  "lepton-federation-" ""
# operators (`lepton dlq`, `lepton models promote|rollback`, consent, key rotation): read the
# dead letters and the audit log, replay dead letters, publish rollouts and decisions
grant lepton-operator "events.rejected audit.log" "events.raw models.updates audit.requests" \
  "${p}dlq-cli-" ""
# outside clients: producers of raw events (`lepton produce`, your apps), prediction apps over
# Kafka (choose their own group)
grant lepton-producer "" "events.raw" "" ""
grant lepton-app "predictions.results" "predictions.requests" "lepton-app" ""
# topic creation (`lepton topics create`) needs Create and DescribeConfigs on the cluster: run it
# as the cluster admin
