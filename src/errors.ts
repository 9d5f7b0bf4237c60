/**
 * Transport failures as values with stable codes. memcached's own error
 * replies (ERROR, CLIENT_ERROR, SERVER_ERROR) are not errors here: they are
 * replies and pass through to the client.
 */

export type BackendErrorCode =
  | 'MSP_BACKEND_TIMEOUT'
  | 'MSP_BACKEND_CLOSED'
  | 'MSP_BACKEND_DESYNC'
  | 'MSP_BACKEND_CONNECT'
  | 'MSP_NODE_DOWN'
  /** The node's copy of the key stopped being trusted while a read of it was in flight. */
  | 'MSP_DISTRUSTED';

export class BackendError extends Error {
  constructor(
    readonly code: BackendErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'BackendError';
  }
}

export const NODE_DOWN = new BackendError('MSP_NODE_DOWN', 'node is down');
export const DISTRUSTED = new BackendError('MSP_DISTRUSTED', 'copy distrusted during the read');
