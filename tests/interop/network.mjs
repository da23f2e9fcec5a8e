// The reference PLC (in memory) and PDS (SQLite under TMPDIR) of @atproto/dev-env, for the
// interop tests. Prints one JSON line, {"pds": URL, "plc": URL}, once both answer; stops
// when its standard input closes (the test process ended, however it ended) or on SIGTERM.
import net from 'node:net'
import { TestNetworkNoAppView } from '@atproto/dev-env'

// dev-env listens on every interface; the tests need loopback only.
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1')
  } else if (args[0] && typeof args[0] === 'object' && args[0].host === undefined) {
    args[0] = { ...args[0], host: '127.0.0.1' }
  }
  return listen.apply(this, args)
}

const network = await TestNetworkNoAppView.create({})
process.stdout.write(JSON.stringify({ pds: network.pds.url, plc: network.plc.url }) + '\n')

let stopping = false
const stop = async () => {
  if (stopping) return
  stopping = true
  await network.close()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.stdin.on('end', stop)
process.stdin.on('close', stop)
process.stdin.resume()
