#!/usr/bin/env bash
# Create (or update, or delete) one RabbitMQ user per CloudBunch role, each allowed only the
# queues its role needs. See deploy/PERMISSIONS.md for what this does and does not restrict.
#
#   deploy/rabbitmq-users.sh [--namespace NS] [--vhost VHOST] [--user-prefix P]
#                            [--no-router] [--service NAME]... [--frontend NAME]... [--delete]
#
# Users: P-router, P-service-NAME, P-frontend-NAME (P defaults to the namespace).
# Passwords come from CLOUDBUNCH_PASSWORD_ROUTER, CLOUDBUNCH_PASSWORD_SERVICE_<NAME>,
# CLOUDBUNCH_PASSWORD_FRONTEND_<NAME> (NAME upper-cased, every other character than A-Z and
# 0-9 turned into "_"). Without one, a new user gets a generated password, printed once on
# stdout as "user<TAB>password"; an existing user keeps its password. Running it again is
# safe: permissions are set again, nothing else changes. Set RABBITMQCTL to run rabbitmqctl
# elsewhere, e.g. RABBITMQCTL="docker compose -f deploy/docker-compose.yml exec -T rabbitmq
# rabbitmqctl".
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

namespace=cb
vhost=/
prefix=
router=1
delete=0
services=()
frontends=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --namespace) namespace=${2:?--namespace needs a value}; shift 2 ;;
        --vhost) vhost=${2:?--vhost needs a value}; shift 2 ;;
        --user-prefix) prefix=${2:?--user-prefix needs a value}; shift 2 ;;
        --service) services+=("${2:?--service needs a value}"); shift 2 ;;
        --frontend) frontends+=("${2:?--frontend needs a value}"); shift 2 ;;
        --no-router) router=0; shift ;;
        --delete) delete=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option: $1" >&2; usage ;;
    esac
done
prefix=${prefix:-$namespace}

# Names go into anchored regexes and user names: a dot in a frontend name would let the
# pattern of frontend "a" (NS.client.a and NS.client.a.*) cover frontend "a.b"'s queue.
name_ok='^[A-Za-z0-9_-]+$'
[[ $namespace =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "bad namespace: $namespace" >&2; exit 2; }
for n in ${services[@]+"${services[@]}"}; do
    [[ $n =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "bad service name: $n" >&2; exit 2; }
done
for n in ${frontends[@]+"${frontends[@]}"}; do
    [[ $n =~ $name_ok ]] || { echo "bad frontend name (letters, digits, _ and - only): $n" >&2
                              exit 2; }
done

read -r -a ctl <<< "${RABBITMQCTL:-rabbitmqctl}"

# Escape regex metacharacters (only "." and "-" can occur in accepted names; "-" is literal
# outside brackets).
re() { printf '%s' "$1" | sed 's/[.]/\\./g'; }

env_name() {  # env_name ROLE [NAME] -> CLOUDBUNCH_PASSWORD_ROLE[_NAME]
    local v="CLOUDBUNCH_PASSWORD_$1${2:+_$2}"
    v=$(printf '%s' "$v" | tr '[:lower:]' '[:upper:]' | tr -c 'A-Z0-9_' '_')
    printf '%s' "$v"
}

# One listing per run: each rabbitmqctl call starts an Erlang VM (about half a second).
existing=$("${ctl[@]}" -s list_users | awk -F'\t' '{print $1}')
user_exists() {
    grep -Fxq -- "$1" <<< "$existing"
}

generate() {
    # 32 characters from [A-Za-z0-9]: no quoting trouble in URLs or shells.
    LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32 || true
}

ensure_user() {  # ensure_user USER PASSWORD_VARIABLE CONFIGURE WRITE READ
    local user=$1 var=$2 password=${!2:-}
    if user_exists "$user"; then
        if [ -n "$password" ]; then
            # Passwords go through stdin so they do not show in the process list.
            printf '%s\n' "$password" | "${ctl[@]}" -q change_password "$user" >/dev/null
            echo "user $user: password set from $var" >&2
        else
            echo "user $user: exists, password unchanged" >&2
        fi
    else
        if [ -z "$password" ]; then
            password=$(generate)
            printf '%s\t%s\n' "$user" "$password"
        fi
        printf '%s\n' "$password" | "${ctl[@]}" -q add_user "$user" >/dev/null
        echo "user $user: created" >&2
    fi
    "${ctl[@]}" -q set_permissions -p "$vhost" "$user" "$3" "$4" "$5" >/dev/null
    echo "user $user on vhost $vhost: configure '$3' write '$4' read '$5'" >&2
}

remove_user() {
    if user_exists "$1"; then
        "${ctl[@]}" -q delete_user "$1" >/dev/null
        echo "user $1: deleted" >&2
    else
        echo "user $1: does not exist" >&2
    fi
}

ns=$(re "$namespace")
# Frontends and services publish only through their exchange (NS.x.ingress, NS.x.replies),
# each bound to the router's queue alone; none may publish to the default exchange
# ("amq.default"), which would reach any queue. RabbitMQ checks write on the exchange for
# basic.publish, write on the queue and read on the exchange for queue.bind, configure for
# declare and delete, read for consume (see PERMISSIONS.md).
xin="$ns\\.x\\.ingress"
xrep="$ns\\.x\\.replies"

if [ "$router" = 1 ]; then
    if [ "$delete" = 1 ]; then
        remove_user "$prefix-router"
    else
        # Declares the shared queues and both exchanges and binds them; publishes
        # dispatches, notices and dead letters through the default exchange.
        ensure_user "$prefix-router" "$(env_name ROUTER)" \
            "^($ns\\.(ingress|replies|dead)|$xin|$xrep)\$" \
            "^(amq\\.default|$ns\\.(ingress|replies))\$" \
            "^($ns\\.(ingress|replies)|$xin|$xrep)\$"
    fi
fi

for name in ${services[@]+"${services[@]}"}; do
    if [ "$delete" = 1 ]; then
        remove_user "$prefix-service-$name"
    else
        own="$ns\\.service\\.$(re "$name")"
        ensure_user "$prefix-service-$name" "$(env_name SERVICE "$name")" \
            "^$own\$" "^$xrep\$" "^$own\$"
    fi
done

for name in ${frontends[@]+"${frontends[@]}"}; do
    if [ "$delete" = 1 ]; then
        remove_user "$prefix-frontend-$name"
    else
        own="$ns\\.client\\.$(re "$name")(\\..+)?"
        ensure_user "$prefix-frontend-$name" "$(env_name FRONTEND "$name")" \
            "^$own\$" "^$xin\$" "^$own\$"
    fi
done
